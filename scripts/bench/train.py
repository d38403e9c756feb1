"""Training throughput: our jitted train step against transformers' LlamaForCausalLM + torch AdamW.

    python scripts/bench/train.py [--steps 10] [--batch 8] [--seq-len 256] [--layers 4] [--hidden 512]

A small Llama-shaped model (GQA, SwiGLU, RMSNorm, untied head) in float32 on both sides,
the same weights, the same random batches, the same AdamW (betas 0.9/0.95, eps 1e-8, weight
decay 0.01, clipping 1.0). Ours keeps only matmul outputs for the backward pass (``--remat
dots``, the default here) and recomputes the cheap elementwise ops: the same math, faster on
CPU than storing them. Each side runs warm-up steps first (our compile is reported
separately), then ``--steps`` timed steps in alternating rounds (ours, then theirs, on the
same batches) so that load from other jobs on a shared machine falls on both sides alike.
Prints the losses of the first step (which must agree), tokens/s per side and the ratio, as
a JSON line and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from machine import cpu_name  # this directory: run as a script


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (steps split among them)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--remat", default="dots", choices=("none", "full", "dots", "dots_no_batch"),
                    help="our rematerialization policy (same math; 'dots' recomputes the elementwise ops "
                         "in the backward instead of storing them, which is faster on CPU)")
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    import torch
    import transformers

    from intern_jax.checkpoint import save_hf
    from intern_jax.config import Execution, ModelConfig
    from intern_jax.model import internlm2
    from intern_jax.sharding import make_mesh
    from intern_jax.train.config import OptimizerConfig, ParallelConfig, TrainConfig
    from intern_jax.train.step import make_train_step, shard_batch
    from intern_jax.train.synthetic import SyntheticData, synthetic_batch

    heads = args.hidden // 64
    cfg = ModelConfig(
        name="bench-llama", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
        num_heads=heads, num_kv_heads=max(heads // 2, 1), intermediate_size=int(args.hidden * 2.75) // 64 * 64,
        max_position_embeddings=max(args.seq_len, 512), rope_theta=10000.0,
    )
    total = args.warmup + args.steps
    opt = OptimizerConfig(learning_rate=1e-3, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.01, grad_clip=1.0)
    tc = TrainConfig(model=cfg, steps=total, batch_size=args.batch, seq_len=args.seq_len, optimizer=opt,
                     parallel=ParallelConfig(fsdp=1), execution=Execution(remat=args.remat))
    data = SyntheticData(seed=0)
    batches = [synthetic_batch(data, cfg.vocab_size, args.batch, args.seq_len, i) for i in range(total)]
    params = internlm2.init(cfg, jax.random.key(0))
    host_params = jax.device_get(params)

    # ---- ours
    ts = make_train_step(cfg, tc, make_mesh({"fsdp": 1}, jax.devices()[:1]))
    state = ts.init_state(params)
    t0 = time.perf_counter()
    state, m = ts.step(state, None, shard_batch(batches[0], ts.batch_sharding))
    ours_first_loss = float(m["loss"])
    compile_s = time.perf_counter() - t0
    for b in batches[1:args.warmup]:
        state, m = ts.step(state, None, shard_batch(b, ts.batch_sharding))
    jax.block_until_ready(state)

    # ---- transformers: the same weights (exported in the Llama layout), the same batches
    import tempfile

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(tmp, cfg, host_params, None, layout="llama")
        model = transformers.LlamaForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32,
                                                              attn_implementation="sdpa")
    model.train()
    decay = [p for n, p in model.named_parameters() if "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if "norm" in n]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=1e-3, betas=(0.9, 0.95), eps=1e-8)

    def torch_step(b):
        tokens = torch.from_numpy(b["tokens"].astype(np.int64))
        positions = torch.from_numpy(b["positions"].astype(np.int64))
        seg = torch.from_numpy(b["segment_ids"].astype(np.int64))
        # packed documents: block-diagonal causal mask as an additive 4-D mask
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
        causal = torch.tril(torch.ones(b["tokens"].shape[1], b["tokens"].shape[1], dtype=torch.bool))
        allowed = same & causal[None]
        mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
        logits = model(input_ids=tokens, position_ids=positions, attention_mask=mask[:, None]).logits
        loss_mask = torch.from_numpy(b["loss_mask"])
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), torch.from_numpy(b["targets"].astype(np.int64)).reshape(-1),
            reduction="none",
        )
        loss = (ce * loss_mask.reshape(-1)).sum() / loss_mask.sum().clamp(min=1)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        return float(loss)

    hf_first_loss = torch_step(batches[0])
    for b in batches[1:args.warmup]:
        torch_step(b)

    # timed rounds alternate between the two sides so a shared machine's load hits both alike
    timed = batches[args.warmup:]
    per_round = max(len(timed) // args.rounds, 1)
    ours_s = hf_s = 0.0
    ratios = []
    for r in range(args.rounds):
        chunk = timed[r * per_round:(r + 1) * per_round]
        t0 = time.perf_counter()
        for b in chunk:
            state, m = ts.step(state, None, shard_batch(b, ts.batch_sharding))
        jax.block_until_ready(state)
        ours_round = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in chunk:
            torch_step(b)
        hf_round = time.perf_counter() - t0
        ours_s, hf_s = ours_s + ours_round, hf_s + hf_round
        ratios.append(hf_round / ours_round)

    tokens = per_round * args.rounds * args.batch * args.seq_len
    result = {
        "bench": "train",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} x {cpu_name()}",
        "device": jax.devices()[0].device_kind,
        "load_average": os.getloadavg()[0],
        "model": {"params": internlm2.count_params(cfg), "layers": cfg.num_layers, "hidden": cfg.hidden_size,
                  "heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads, "vocab": cfg.vocab_size},
        "batch": args.batch, "seq_len": args.seq_len, "timed_steps": args.steps, "remat": args.remat,
        "first_loss": {"ours": ours_first_loss, "transformers": hf_first_loss},
        "ours_tokens_per_s": tokens / ours_s,
        "transformers_tokens_per_s": tokens / hf_s,
        "ratio": hf_s / ours_s,
        "round_ratios": ratios,
        "ours_compile_s": compile_s,
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }
    print(json.dumps(result))
    print("| measure | value |\n|---|---|")
    print(f"| ours (jitted step, float32) | {result['ours_tokens_per_s']:.0f} tokens/s |")
    print(f"| transformers LlamaForCausalLM + torch AdamW | {result['transformers_tokens_per_s']:.0f} tokens/s |")
    print(f"| ratio | {result['ratio']:.2f}x |")
    print(f"| first-step loss, ours / transformers | {ours_first_loss:.5f} / {hf_first_loss:.5f} |")
    print(f"| compile (first step) | {compile_s:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
