"""Fine-tuning benchmark: QLoRA memory of InternLM2-7B ahead of time, and LoRA / QLoRA training speed.

    python scripts/bench/finetune.py [--memory-only | --speed-only] [--seq-len 2048] [--speed-seq-len 256]

(1) Peak memory of one QLoRA train step of InternLM2-7B (NF4 + double-quantized scales,
    LoRA r=64 on every matrix, bf16 compute, full remat, batch 1 x --seq-len), read from the
    compiled program's ``memory_analysis()`` on this machine's backend with abstract inputs
    (no weight is allocated). The same step with a plain bf16 base (LoRA) is compiled in the
    same run as the peer; XTuner's published figure for this recipe is ~12 GB ("one 8 GB card"
    is for smaller models). On CPU the analysis describes XLA:CPU's buffer assignment.
(2) Training tokens/s of SmolLM2-135M (the embedded GGUF, f32): our LoRA and QLoRA (NF4) steps
    against transformers + peft LoRA (same rank, targets, batch and tokens) in the same run, timed
    in alternating rounds so that load from other jobs falls on every side alike.
Prints a JSON line and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from machine import cpu_name  # this directory: run as a script

GB = 1024**3


def _abstract_frozen(frozen, sharding):
    import jax

    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), frozen)


def qlora_memory(seq_len: int, rank: int, quant: str | None, attention: str = "xla", micro_batches: int = 1) -> dict:
    """Memory of one compiled train step (abstract inputs) of InternLM2-7B; ``quant`` None = bf16 base.

    The ``*_gb`` keys are GiB (2**30 bytes). ``micro_batches > 1``: a batch of that many rows, one per
    accumulated micro-batch (the recipe's gradient accumulation).

    ``attention="pallas"`` compiles the flash-attention kernel (what ``auto`` picks on GPU; on CPU it
    is lowered in interpret mode, block by block) instead of XLA's materialised score matrix."""
    import dataclasses

    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from intern_jax.config import Execution, load_config
    from intern_jax.model import internlm2
    from intern_jax.model import lora as L
    from intern_jax.model import qlora as Q
    from intern_jax.sharding import make_mesh
    from intern_jax.train.config import OptimizerConfig, ParallelConfig, TrainConfig
    from intern_jax.train.finetune import make_assemble
    from intern_jax.train.step import make_train_step

    root = Path(__file__).resolve().parents[2]
    cfg = dataclasses.replace(load_config(root / "configs/model/internlm2_7b.py"), param_dtype="bfloat16")
    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    replicated = NamedSharding(mesh, PartitionSpec())
    frozen = internlm2.abstract(cfg)
    if quant:
        frozen = Q.quantize_params(frozen, quant, double_quant=True, abstract=True)
    lora = L.LoraConfig(rank=rank, alpha=16.0, dropout=0.1)
    adapters = L.abstract_lora(frozen, lora)
    train_cfg = TrainConfig(model=cfg, steps=1000, batch_size=micro_batches, seq_len=seq_len,
                            optimizer=OptimizerConfig(learning_rate=2e-4, warmup_steps=10),
                            parallel=ParallelConfig(fsdp=1, zero="none", micro_batches=micro_batches),
                            execution=Execution(remat="full", attention_impl=attention))
    ts = make_train_step(cfg, train_cfg, mesh, assemble=make_assemble(lora), abstract_trainable=adapters,
                         trainable_shardings=jax.tree.map(lambda _: replicated, adapters))
    start = time.perf_counter()
    compiled = ts.step.lower(ts.abstract_state(), _abstract_frozen(frozen, replicated),
                             ts.abstract_batch(micro_batches, seq_len)).compile()
    compile_s = time.perf_counter() - start
    m = compiled.memory_analysis()
    frozen_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(frozen))
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {
        "base": quant or "bf16",
        "attention": attention,
        "peak_gb": peak / GB,
        "frozen_weights_gb": frozen_bytes / GB,
        "arguments_gb": m.argument_size_in_bytes / GB,
        "temp_gb": m.temp_size_in_bytes / GB,
        "trainable_params": L.count_trainable(adapters),
        "compile_s": compile_s,
    }


def _our_step(model, lora, quant, batch):
    """(step function, compile seconds) of our jitted LoRA / QLoRA train step on one device."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from intern_jax.model import lora as L
    from intern_jax.model import qlora as Q
    from intern_jax.sharding import make_mesh
    from intern_jax.train.config import OptimizerConfig, ParallelConfig, TrainConfig
    from intern_jax.train.finetune import make_assemble
    from intern_jax.train.step import make_train_step

    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    replicated = NamedSharding(mesh, PartitionSpec())
    frozen = Q.quantize_params(model.params, quant, double_quant=True) if quant else model.params
    adapters = L.init_lora(frozen, lora, jax.random.key(0))
    b, t = batch["tokens"].shape
    train_cfg = TrainConfig(model=model.config, steps=1000, batch_size=b, seq_len=t,
                            optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=0, weight_decay=0.0),
                            parallel=ParallelConfig(fsdp=1, zero="none"))
    ts = make_train_step(model.config, train_cfg, mesh, assemble=make_assemble(lora),
                         abstract_trainable=jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), adapters),
                         trainable_shardings=jax.tree.map(lambda _: replicated, adapters))
    box = {"state": ts.init_state(adapters)}
    frozen = jax.device_put(frozen, replicated)
    batch = {k: jax.device_put(np.asarray(v), ts.batch_sharding) for k, v in batch.items()}

    def step():
        box["state"], metrics = ts.step(box["state"], frozen, batch)
        return float(jax.block_until_ready(metrics)["loss"])

    start = time.perf_counter()
    step()
    return step, time.perf_counter() - start


def _torch_step(path, rank, alpha, batch):
    """Step function of transformers' LlamaForCausalLM (from the GGUF) with a peft LoRA and AdamW."""
    import torch
    from peft import LoraConfig, get_peft_model

    from intern_jax.testing import load_transformers_gguf

    model = load_transformers_gguf(path).train()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    tokens = torch.tensor(batch["tokens"], dtype=torch.long)

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    step()  # warm-up
    return step


def training_speed(batch_size: int, seq_len: int, rank: int, steps: int, rounds: int) -> dict:
    """Tokens/s of each side, timed in alternating rounds so other jobs' load falls on all alike."""
    import numpy as np
    import torch

    from intern_jax.checkpoint import embedded_model_path, load_model
    from intern_jax.model.lora import LoraConfig

    path = embedded_model_path()
    model = load_model(path)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.config.vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
    batch = {
        "tokens": tokens[:, :-1], "targets": tokens[:, 1:],
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy(),
        "segment_ids": np.ones((batch_size, seq_len), np.int32),
        "loss_mask": np.ones((batch_size, seq_len), np.float32),
    }
    lora = LoraConfig(rank=rank, alpha=2.0 * rank)
    sides = {"torch_peft_lora": _torch_step(path, rank, 2.0 * rank, batch)}
    compile_s = {}
    sides["ours_lora"], compile_s["ours_lora"] = _our_step(model, lora, None, batch)
    sides["ours_qlora_nf4"], compile_s["ours_qlora_nf4"] = _our_step(model, lora, "nf4", batch)
    spent = dict.fromkeys(sides, 0.0)
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for name, step in sides.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            spent[name] += time.perf_counter() - start
    n = per_round * rounds
    out = {name: {"tokens_per_s": batch_size * seq_len * n / spent[name], "step_s": spent[name] / n}
           for name in sides}
    for name in compile_s:
        out[name]["compile_s"] = compile_s[name]
        out[name]["vs_torch_peft"] = out[name]["tokens_per_s"] / out["torch_peft_lora"]["tokens_per_s"]
    out["torch_threads"] = torch.get_num_threads()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--seq-len", type=int, default=2048, help="7B memory analysis sequence length")
    ap.add_argument("--rank", type=int, default=64, help="7B LoRA rank (XTuner's QLoRA recipe: 64)")
    ap.add_argument("--micro-batches", type=int, default=16,
                    help="the extra QLoRA row: batch 1 x this many accumulated micro-batches (the recipe's)")
    ap.add_argument("--speed-seq-len", type=int, default=256)
    ap.add_argument("--speed-batch", type=int, default=2)
    ap.add_argument("--speed-rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per side")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (steps split among them)")
    args = ap.parse_args(argv)

    import jax

    result = {"machine": f"{cpu_name()} ({jax.default_backend()}, {jax.device_count()} device(s))",
              "date": time.strftime("%Y-%m-%d")}
    if not args.speed_only:
        runs = {"qlora_nf4_flash": ("nf4", "pallas", 1), "qlora_nf4_xla_attention": ("nf4", "xla", 1),
                "lora_bf16_flash": (None, "pallas", 1),
                f"qlora_nf4_flash_{args.micro_batches}_micro_batches": ("nf4", "pallas", args.micro_batches)}
        mem = {name: qlora_memory(args.seq_len, args.rank, q, a, k) for name, (q, a, k) in runs.items()}
        mem["qlora_vs_lora"] = mem["qlora_nf4_flash"]["peak_gb"] / mem["lora_bf16_flash"]["peak_gb"]
        mem["qlora_vs_xtuner_12gb"] = mem["qlora_nf4_flash"]["peak_gb"] / 12.0
        result["memory_7b"] = mem
    if not args.memory_only:
        result["speed_smollm2"] = training_speed(args.speed_batch, args.speed_seq_len, args.speed_rank, args.steps,
                                                   args.rounds)
    print(json.dumps(result))
    print(f"\n{result['machine']}, {result['date']}\n")
    if "memory_7b" in result:
        m = result["memory_7b"]
        print(f"| InternLM2-7B, seq {args.seq_len}, batch 1, remat, r={args.rank} | peak GiB | peak GB (1e9 B) | "
              "temporaries GiB | frozen weights GiB |")
        print("| --- | --- | --- | --- | --- |")
        for name in mem:
            if not isinstance(mem[name], dict):
                continue
            r = m[name]
            print(f"| {name} | {r['peak_gb']:.2f} | {r['peak_gb'] * GB / 1e9:.2f} | {r['temp_gb']:.2f} | "
                  f"{r['frozen_weights_gb']:.2f} |")
        print(f"\nQLoRA / bf16 LoRA peak: {m['qlora_vs_lora']:.2f}x; "
              f"vs XTuner's ~12 GB: {m['qlora_vs_xtuner_12gb']:.2f}x\n")
    if "speed_smollm2" in result:
        s = result["speed_smollm2"]
        print(f"| SmolLM2-135M, batch {args.speed_batch} x {args.speed_seq_len}, r={args.speed_rank} | tokens/s | vs "
              "transformers+peft |")
        print("| --- | --- | --- |")
        print(f"| transformers + peft LoRA | {s['torch_peft_lora']['tokens_per_s']:.0f} | 1.00 |")
        for name in ("ours_lora", "ours_qlora_nf4"):
            print(f"| {name} | {s[name]['tokens_per_s']:.0f} | {s[name]['vs_torch_peft']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
