"""The parts of the device suite (``scripts/bench/device_suite.py``): what each one measures, and how.

Each part is a function of a ``Part`` (``device_suite.py``), run in a process of its own; it records
rows of measurements, headline ``results``, ``summary`` lines for the markdown table and ``errors``
(a program that does not compile, a result that disagrees with its peer), and the ``Part`` saves
them after every change, so that a part stopped at its time box keeps what it measured. This
module imports only the standard library at the top (jax and the project inside the parts), so
the suite's parent process never takes the device.

Imports: only what the GPU machine's image has (jax, numpy, optax, ...). The pretraining and
fine-tuning config files build data configs whose modules import grain, which that image lacks,
so the recipes' model settings are restated here (``PRETRAIN_MODEL``, ``PRETRAIN_EXECUTION`` and ``QLORA``) and a test
(tests/bench/test_device_suite.py) checks them against the config files.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scripts.bench.device_suite import Part

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 1024**3
CPU_PLAN_QLORA_GIB = 9.25  # docs/benchmarks.md, fine-tuning: compiled memory analysis on CPU

# The pretraining recipe's model settings (configs/pretrain/_internevo.py: bf16 compute over fp32
# master weights, full remat) and the QLoRA recipe (configs/finetune/internlm2_7b_qlora_chat.py).
PRETRAIN_MODEL = {"param_dtype": "float32"}
PRETRAIN_EXECUTION = {"dtype": "bfloat16", "remat": "full"}
QLORA = {
    "quant": {"kind": "nf4", "block": 64, "double_quant": True, "targets": r"layers/(wqkv|wo|w1|w2|w3)"},
    "lora": {"rank": 64, "alpha": 16.0, "dropout": 0.1, "targets": r"layers/(wqkv|wo|w1|w2|w3)"},
    "dtype": "bfloat16", "base_dtype": "bfloat16", "remat": "full", "seq_len": 2048,
}
# Kernel shapes on a device and with --smoke (tests/bench lowers the device ones for CUDA on a CPU).
FLASH = {"device": {"heads": 32, "kv_heads": 8, "head_dim": 128, "seq_batch": ((2048, 4), (8192, 1))},
         "smoke": {"heads": 4, "kv_heads": 2, "head_dim": 32, "seq_batch": ((128, 1),)}}
PAGED = {"device": {"batch": 64, "context": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128, "page": 16},
         "smoke": {"batch": 2, "context": 64, "heads": 4, "kv_heads": 2, "head_dim": 32, "page": 16}}
QMATMUL = {"device": {"shapes": ((4096, 4096), (4096, 14336)), "ms": (1, 16, 64), "chain": 32},
           "smoke": {"shapes": ((128, 256),), "ms": (1, 16), "chain": 2}}
TINY_MODEL = {"vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
              "intermediate_size": 128}


# ------------------------------------------------------------------------------ timing and data


def _random(key: int, shape, dtype, scale: float = 1.0):
    import jax
    import jax.numpy as jnp

    return (jax.random.normal(jax.random.key(key), shape, jnp.float32) * scale).astype(dtype)


def _compile(fn, *args):
    """(compiled, seconds): ``fn`` jitted, lowered and compiled for ``args``."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _compile_all(part: Part, programs: dict) -> dict:
    """{name: (compiled, seconds)} for {name: (fn, args)}; a program that fails to compile (a kernel that
    does not lower, say) is recorded and left out. One at a time: XLA autotunes its GPU matmuls on the
    device while compiling, and concurrent compiles would disturb those timings."""
    done = {}
    for name, (fn, args) in programs.items():
        try:
            done[name] = _compile(fn, *args)
        except Exception as e:  # noqa: BLE001 - recorded; the other programs still run
            part.error(f"compile {name}", e)
    return done


def _time(fn, *args, reps: int, calls: int = 1) -> dict:
    """Median seconds per call: ``reps`` repetitions of ``calls`` back-to-back calls, synchronised per repetition."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = None
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls)
    median = statistics.median(times)
    return {"s": median, "spread": (max(times) - min(times)) / median if median > 0 else 0.0}


def _rel_err(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _memory_stats() -> dict | None:
    import jax

    return jax.devices()[0].memory_stats()


def _model_config(name: str, smoke: bool, **settings):
    from intern_jax.config import load_config

    cfg = load_config(ROOT / "configs/model" / name)
    tiny = {**TINY_MODEL, "name": f"{cfg.name} (tiny smoke shape)"} if smoke else {}
    return dataclasses.replace(cfg, **tiny, **settings)


# ------------------------------------------------------------------------------ the parts


def calibration(part: Part):
    import jax
    import jax.numpy as jnp

    from intern_jax.train.metrics import peak_flops_per_device

    n = 256 if part.smoke else 8192
    copy_bytes = (4 if part.smoke else 1024) * 2**20
    reps = 3 if part.smoke else 20
    a, b = _random(1, (n, n), jnp.bfloat16), _random(2, (n, n), jnp.bfloat16)
    x = _random(3, (copy_bytes // 4,), jnp.float32)
    programs = _compile_all(part, {"matmul": (jnp.dot, (a, b)), "copy": (lambda x: x + 1.0, (x,))})
    matmul, compile_matmul = programs["matmul"]
    t = _time(matmul, a, b, reps=reps, calls=5)
    peak = 2 * n**3 / t["s"]
    part.row(bench="bf16_matmul", n=n, ms=t["s"] * 1e3, spread=t["spread"], tflops=peak / 1e12,
             compile_s=compile_matmul)
    copy, compile_copy = programs["copy"]
    t = _time(copy, x, reps=reps, calls=5)
    bandwidth = 2 * copy_bytes / t["s"]  # read + write
    part.row(bench="copy", bytes=copy_bytes, ms=t["s"] * 1e3, spread=t["spread"], gb_per_s=bandwidth / 1e9,
             compile_s=compile_copy)
    sheet = peak_flops_per_device(jax.devices()[0])
    part.results = {"matmul_tflops": peak / 1e12, "copy_gb_per_s": bandwidth / 1e9,
                    "datasheet_tflops": sheet / 1e12 if sheet else None}
    part.line(f"bf16 matmul {n}^3", f"{peak / 1e12:.1f} TFLOP/s",
              f"{peak / sheet:.0%} of the datasheet's {sheet / 1e12:.0f}" if sheet else "")
    part.line(f"device-to-device copy, {copy_bytes >> 20} MiB (x + 1: read + write)", f"{bandwidth / 1e9:.0f} GB/s")


def flash(part: Part):
    import jax
    import jax.numpy as jnp

    from kernels import flash_attention

    shape = FLASH["smoke" if part.smoke else "device"]
    heads, kv_heads, head_dim, shapes = shape["heads"], shape["kv_heads"], shape["head_dim"], shape["seq_batch"]
    reps = 2 if part.smoke else 10
    on_gpu = jax.default_backend() == "gpu"
    impls = {
        "pallas": lambda q, k, v: flash_attention(q, k, v, causal=True),
        "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"),
        "xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"),
    }
    if not on_gpu:
        del impls["cudnn"]
        part.results["cudnn"] = "not measured: cuDNN needs a GPU"

    programs, inputs = {}, {}
    for seq, batch in shapes:
        q = _random(seq, (batch, seq, heads, head_dim), jnp.bfloat16)
        k = _random(seq + 1, (batch, seq, kv_heads, head_dim), jnp.bfloat16)
        v = _random(seq + 2, (batch, seq, kv_heads, head_dim), jnp.bfloat16)
        do = _random(seq + 3, q.shape, jnp.bfloat16)
        inputs[seq] = (q, k, v, do)
        for name, attn in impls.items():
            programs[(seq, name, "fwd")] = (attn, (q, k, v))
            programs[(seq, name, "fwd+bwd")] = (fwd_bwd(attn), (q, k, v, do))
    compiled = _compile_all(part, programs)
    for seq, batch in shapes:
        q, k, v, do = inputs[seq]
        fwd_flops = 4 * batch * heads * seq * seq * head_dim / 2  # two matmuls, causal halves them
        outputs, times = {}, {}
        for (s, name, which), (fn, compile_s) in compiled.items():
            if s != seq:
                continue
            args = (q, k, v) if which == "fwd" else (q, k, v, do)
            try:
                outputs[name, which] = fn(*args)
                t = _time(fn, *args, reps=reps, calls=1 if part.smoke else 3)
            except Exception as e:  # noqa: BLE001
                part.error(f"run {name} {which} seq {seq}", e)
                continue
            times[name, which] = t["s"]
            flops = fwd_flops * (1 if which == "fwd" else 3.5)  # backward: five matmuls to the forward's two
            part.row(bench="flash_attention", impl=name, pass_=which, seq=seq, batch=batch, heads=heads,
                     kv_heads=kv_heads, head_dim=head_dim, ms=t["s"] * 1e3, spread=t["spread"],
                     tflops=flops / t["s"] / 1e12, compile_s=compile_s)
        for which in ("fwd", "fwd+bwd"):
            ours, peer = outputs.get(("pallas", which)), outputs.get(("xla", which))
            if ours is not None and peer is not None:
                err = max(_rel_err(a, b) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(peer)))
                part.results[f"seq{seq}_{which}_rel_err_vs_xla"] = err
                part.check(f"pallas {which} seq {seq} against XLA", err)
            for peer_name in ("cudnn", "xla"):
                if ("pallas", which) in times and (peer_name, which) in times:
                    ratio = times[peer_name, which] / times["pallas", which]
                    part.results[f"seq{seq}_{which}_pallas_vs_{peer_name}"] = ratio
            if ("pallas", which) in times:
                t = times["pallas", which]
                flops = fwd_flops * (1 if which == "fwd" else 3.5)
                against = ", ".join(f"{part.results[f'seq{seq}_{which}_pallas_vs_{p}']:.2f}x {p}"
                                    for p in ("cudnn", "xla") if f"seq{seq}_{which}_pallas_vs_{p}" in part.results)
                part.line(f"flash attention {which}, seq {seq}, batch {batch}",
                          f"{t * 1e3:.3g} ms, {flops / t / 1e12:.0f} TFLOP/s", against)


def paged(part: Part):
    import jax
    import jax.numpy as jnp

    from kernels import paged_decode_attention, paged_decode_reference, quantize_kv_int8

    shape = PAGED["smoke" if part.smoke else "device"]
    batch, context, heads, kv_heads, head_dim, page = (
        shape[k] for k in ("batch", "context", "heads", "kv_heads", "head_dim", "page"))
    reps = 2 if part.smoke else 10
    copy = part.calibration.get("copy_gb_per_s")
    pages_per_seq = context // page
    num_pages = batch * pages_per_seq
    shape = (kv_heads, num_pages, page, head_dim)
    k, v = _random(1, shape, jnp.bfloat16), _random(2, shape, jnp.bfloat16)
    tables = jax.random.permutation(jax.random.key(3), num_pages).reshape(batch, pages_per_seq).astype(jnp.int32)
    lengths = jnp.full((batch,), context, jnp.int32)
    q = _random(4, (batch, heads, head_dim), jnp.bfloat16)
    (kq, ks), (vq, vs) = quantize_kv_int8(k), quantize_kv_int8(v)
    cases = {
        "bfloat16": ((q, k, v, tables, lengths), 2 * k.size * k.dtype.itemsize),
        "int8": ((q, kq, vq, tables, lengths, ks, vs), 2 * (kq.size + ks.size * ks.dtype.itemsize)),
    }

    def kernel(q, k, v, t, n, ks=None, vs=None):
        return paged_decode_attention(q, k, v, t, n, k_scales=ks, v_scales=vs)

    def reference(q, k, v, t, n, ks=None, vs=None):
        return paged_decode_reference(q, k, v, t, n, k_scales=ks, v_scales=vs)

    programs = {}
    for kv_dtype, (args, _) in cases.items():
        programs[kv_dtype, "pallas"] = (kernel, args)
        programs[kv_dtype, "reference"] = (reference, args)
    compiled = _compile_all(part, programs)
    for kv_dtype, (args, nbytes) in cases.items():
        out = {}
        for impl in ("pallas", "reference"):
            if (kv_dtype, impl) not in compiled:
                continue
            fn, compile_s = compiled[kv_dtype, impl]
            out[impl] = fn(*args)
            t = _time(fn, *args, reps=reps, calls=1 if part.smoke else 5)
            gbs = nbytes / t["s"] / 1e9
            part.row(bench="paged_decode", impl=impl, kv_dtype=kv_dtype, batch=batch, context=context, heads=heads,
                     kv_heads=kv_heads, head_dim=head_dim, page_size=page, kv_bytes=nbytes, us=t["s"] * 1e6,
                     spread=t["spread"], gb_per_s=gbs, share_of_copy=gbs / copy if copy else None,
                     compile_s=compile_s)
            part.results[f"{kv_dtype}_{impl}_gb_per_s"] = gbs
            if impl == "pallas":
                part.results[f"{kv_dtype}_share_of_copy"] = gbs / copy if copy else None
        if len(out) == 2:
            part.check(f"paged decode {kv_dtype} against the jnp reference", _rel_err(out["pallas"], out["reference"]))
            ours, peer = part.results[f"{kv_dtype}_pallas_gb_per_s"], part.results[f"{kv_dtype}_reference_gb_per_s"]
            share = f"{ours / copy:.0%} of copy" if copy else "copy bandwidth not measured"
            part.line(f"paged decode, {kv_dtype} KV, batch {batch}, context {context}", f"{ours:.0f} GB/s",
                      f"{share}; {ours / peer:.2f}x the jnp gather")


def chained(product, d_in: int, chain: int):
    """``chain`` dependent products in one program (each output's first ``d_in`` columns feed the next
    input), so that launch overhead does not swamp microsecond kernels; one call site, compiled once."""
    from jax import lax

    def run(x, *weights):
        return lax.fori_loop(0, chain, lambda i, x: product(x, *weights)[:, :d_in], x)

    return run


def fwd_bwd(attn):
    """(q, k, v, do) -> (out, (dq, dk, dv)) of an attention function."""
    import jax

    def run(q, k, v, do):
        out, vjp = jax.vjp(attn, q, k, v)
        return out, vjp(do)

    return run


def qmatmul(part: Part):
    import jax.numpy as jnp

    from kernels import quantize_w4, quantize_w8, quantized_matmul, quantized_matmul_reference

    shapes, ms, chain = (QMATMUL["smoke" if part.smoke else "device"][k] for k in ("shapes", "ms", "chain"))
    reps = 2 if part.smoke else 10
    copy = part.calibration.get("copy_gb_per_s")

    impls = {
        "bf16": lambda x, w: jnp.dot(x, w),
        "w8": lambda x, w, s: quantized_matmul(x, w, s, bits=8),
        "w4": lambda x, w, s, z: quantized_matmul(x, w, s, z, bits=4, group_size=128),
    }
    programs, weights, nbytes = {}, {}, {}
    for d_in, d_out in shapes:
        w = _random(d_out, (d_in, d_out), jnp.bfloat16, scale=d_in**-0.5)
        weights[d_in, d_out] = {"bf16": (w,), "w8": quantize_w8(w), "w4": quantize_w4(w, 128)}
        for impl, ws in weights[d_in, d_out].items():
            nbytes[d_in, d_out, impl] = sum(a.size * a.dtype.itemsize for a in ws)
            for m in ms:
                x = _random(m, (m, d_in), jnp.bfloat16)
                programs[d_in, d_out, m, impl] = (chained(impls[impl], d_in, chain), (x, *ws))
            if impl != "bf16":  # one product against the jnp reference, at M = 16
                bits = 8 if impl == "w8" else 4
                programs[d_in, d_out, "check", impl] = (impls[impl], (_random(16, (16, d_in), jnp.bfloat16), *ws))
                programs[d_in, d_out, "reference", impl] = (
                    lambda x, *ws, bits=bits: quantized_matmul_reference(
                        x, *ws, bits=bits, group_size=128 if bits == 4 else None),
                    (_random(16, (16, d_in), jnp.bfloat16), *ws))
    # the loop's own cost per call (a one-element update in place of the product), to read the M=1 times against
    floor_x = _random(0, (1, shapes[0][0]), jnp.bfloat16)
    programs["loop floor"] = (chained(lambda x: x.at[0, 0].add(1), shapes[0][0], chain), (floor_x,))
    compiled = _compile_all(part, programs)
    if "loop floor" in compiled:
        fn, compile_s = compiled["loop floor"]
        t = _time(fn, floor_x, reps=reps)
        part.results["loop_floor_us"] = t["s"] / chain * 1e6
        part.row(bench="quantized_matmul_loop_floor", us=t["s"] / chain * 1e6, spread=t["spread"], chain=chain,
                 compile_s=compile_s)
    for d_in, d_out in shapes:
        for impl in ("w8", "w4"):
            if (d_in, d_out, "check", impl) in compiled and (d_in, d_out, "reference", impl) in compiled:
                args = programs[d_in, d_out, "check", impl][1]
                ours = compiled[d_in, d_out, "check", impl][0](*args)
                peer = compiled[d_in, d_out, "reference", impl][0](*args)
                part.check(f"{impl} {d_in}x{d_out} against the jnp reference", _rel_err(ours, peer))
        for m in ms:
            times = {}
            for impl in impls:
                if (d_in, d_out, m, impl) not in compiled:
                    continue
                fn, compile_s = compiled[d_in, d_out, m, impl]
                t = _time(fn, *programs[d_in, d_out, m, impl][1], reps=reps)
                times[impl] = per_call = t["s"] / chain
                gbs = nbytes[d_in, d_out, impl] / per_call / 1e9
                part.row(bench="quantized_matmul", impl=impl, m=m, d_in=d_in, d_out=d_out, us=per_call * 1e6,
                         spread=t["spread"], weight_bytes=nbytes[d_in, d_out, impl], gb_per_s=gbs,
                         share_of_copy=gbs / copy if copy else None, chain=chain, compile_s=compile_s)
            if "bf16" in times:
                for impl in ("w8", "w4"):
                    if impl in times:
                        part.results[f"{d_in}x{d_out}_m{m}_{impl}_speedup"] = times["bf16"] / times[impl]
                against = ", ".join(f"{impl} {times['bf16'] / times[impl]:.2f}x" for impl in ("w8", "w4")
                                    if impl in times)
                floor = part.results.get("loop_floor_us")
                part.line(f"W8A16 / W4A16, M={m}, {d_in}x{d_out}", f"bf16 {times['bf16'] * 1e6:.1f} us",
                          f"speed-up {against}" + (f" (loop floor {floor:.1f} us a call)" if floor else ""))


def train(part: Part):
    """MFU counts ``metrics.flops_per_token``: 6 x matmul weights + attention over the full T x T scores
    (the project's convention, as in the training logs; causal skipping is not subtracted)."""
    import jax
    import numpy as np

    from intern_jax.config import Execution
    from intern_jax.model import internlm2
    from intern_jax.sharding import make_mesh
    from intern_jax.train.config import ParallelConfig, TrainConfig
    from intern_jax.train.metrics import flops_per_token, peak_flops_per_device
    from intern_jax.train.step import make_train_step, shard_batch
    from intern_jax.train.synthetic import SyntheticData, synthetic_batch

    # one 4096-token row per micro-batch, as the recipe gives each device; 4 accumulated per step
    seq, batch, steps = (64, 2, 2) if part.smoke else (4096, 4, 5)
    peak = (part.calibration.get("matmul_tflops") or 0) * 1e12
    sheet = peak_flops_per_device(jax.devices()[0])
    mesh = make_mesh({"fsdp": 1}, jax.devices()[:1])
    for attention in ("xla", "pallas"):
        cfg = _model_config("internlm2_1_8b.py", part.smoke, **PRETRAIN_MODEL)
        tc = TrainConfig(model=cfg, steps=1000, batch_size=batch, seq_len=seq,
                         parallel=ParallelConfig(fsdp=1, micro_batches=batch),
                         execution=Execution(**PRETRAIN_EXECUTION, attention_impl=attention))
        state = step = None
        try:
            ts = make_train_step(cfg, tc, mesh)
            start = time.perf_counter()
            step = ts.step.lower(ts.abstract_state(), None, ts.abstract_batch(batch, seq)).compile()
            compile_s = time.perf_counter() - start
            state = ts.init_state(internlm2.init(cfg, jax.random.key(0), mesh))
            data = shard_batch(synthetic_batch(SyntheticData(seed=0), cfg.vocab_size, batch, seq, 0),
                               ts.batch_sharding)
            state, metrics = step(state, None, data)  # warm-up
            jax.block_until_ready(state)
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                state, metrics = step(state, None, data)
                jax.block_until_ready(state)
                times.append(time.perf_counter() - start)
            loss = float(metrics["loss"])
        except Exception as e:  # noqa: BLE001 - the other attention path still runs
            part.error(f"train step, {attention} attention", e)
            continue
        finally:
            state = step = None  # the next variant gets the whole device
        if not np.isfinite(loss):
            part.error(f"train step, {attention} attention", message=f"loss is {loss}")
        t = statistics.median(times)
        tokens_per_s = batch * seq / t
        achieved = tokens_per_s * flops_per_token(cfg, seq)
        stats = _memory_stats() or {}
        part.row(bench="train_step", model=cfg.name, params=internlm2.count_params(cfg), attention=attention,
                 batch=batch, micro_batches=batch, seq=seq, step_s=t, spread=(max(times) - min(times)) / t,
                 tokens_per_s=tokens_per_s, model_tflops=achieved / 1e12, mfu=achieved / peak if peak else None,
                 mfu_datasheet=achieved / sheet if sheet else None, loss=loss, compile_s=compile_s,
                 process_peak_gib=stats.get("peak_bytes_in_use", 0) / GIB or None)
        part.results[f"{attention}_tokens_per_s"] = tokens_per_s
        part.results[f"{attention}_mfu"] = achieved / peak if peak else None
        against = f"MFU {achieved / peak:.1%} of the measured matmul peak" if peak else "matmul peak not measured"
        if sheet:
            against += f" ({achieved / sheet:.1%} of the datasheet's)"
        part.line(f"{cfg.name} train step, seq {seq}, {batch} accumulated rows, {attention} attention",
                  f"{tokens_per_s:,.0f} tokens/s", against)
    if "xla_tokens_per_s" in part.results and "pallas_tokens_per_s" in part.results:
        part.results["pallas_vs_xla"] = part.results["pallas_tokens_per_s"] / part.results["xla_tokens_per_s"]


def _filled(abstract, salt: int):
    """An array shaped like ``abstract``, filled with hashed-index values: no random-number temporaries,
    so nothing but the array itself is allocated (the memory part reads the device's peak)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    shape, dtype = abstract.shape, jnp.dtype(abstract.dtype)

    def fill():
        i = lax.iota(jnp.uint32, math.prod(shape)) * jnp.uint32(2654435761) + jnp.uint32(salt * 40503 + 1)
        i = (i ^ (i >> 15)) * jnp.uint32(2246822519)
        i = i ^ (i >> 13)
        if jnp.issubdtype(dtype, jnp.integer):
            lo, hi = (0, 255) if dtype == jnp.uint8 else (-127, 127)
            values = (((i >> 8) % (hi - lo + 1)).astype(jnp.int32) + lo).astype(dtype)
        else:
            values = (0.005 + 0.02 * (i >> 8).astype(jnp.float32) / 2**24).astype(dtype)
        return values.reshape(shape)

    return jax.jit(fill, out_shardings=abstract.sharding)()


def qlora(part: Part):
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from intern_jax.config import Execution
    from intern_jax.model import internlm2
    from intern_jax.model import lora as L
    from intern_jax.model import qlora as Q
    from intern_jax.sharding import make_mesh
    from intern_jax.train.config import OptimizerConfig, ParallelConfig, TrainConfig
    from intern_jax.train.finetune import make_assemble
    from intern_jax.train.step import make_train_step, shard_batch
    from intern_jax.train.synthetic import SyntheticData, synthetic_batch

    seq = 64 if part.smoke else QLORA["seq_len"]
    cfg = _model_config("internlm2_7b.py", part.smoke, param_dtype=QLORA["base_dtype"])
    mesh = make_mesh({"fsdp": 1}, jax.devices()[:1])
    replicated = NamedSharding(mesh, PartitionSpec())
    frozen = Q.quantize_params(internlm2.abstract(cfg), abstract=True, **QLORA["quant"])
    frozen = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), frozen)
    lora = L.LoraConfig(**QLORA["lora"])
    adapters = L.abstract_lora(frozen, lora)
    tc = TrainConfig(model=cfg, steps=1000, batch_size=1, seq_len=seq,
                     optimizer=OptimizerConfig(learning_rate=2e-4, warmup_steps=90, min_lr_ratio=0.0, b2=0.999,
                                               weight_decay=0.0),
                     parallel=ParallelConfig(fsdp=1, zero="none"),
                     execution=Execution(dtype=QLORA["dtype"], remat=QLORA["remat"], attention_impl="pallas"))
    ts = make_train_step(cfg, tc, mesh, assemble=make_assemble(lora), abstract_trainable=adapters,
                         trainable_shardings=jax.tree.map(lambda _: replicated, adapters))
    # compile before anything is allocated, so that compile-time scratch cannot set the peak
    start = time.perf_counter()
    step = ts.step.lower(ts.abstract_state(), frozen, ts.abstract_batch(1, seq)).compile()
    compile_s = time.perf_counter() - start
    plan = step.memory_analysis()
    plan_bytes = None
    if plan is not None:
        plan_bytes = (plan.argument_size_in_bytes + plan.output_size_in_bytes - plan.alias_size_in_bytes
                      + plan.temp_size_in_bytes)
    leaves, treedef = jax.tree.flatten(frozen)
    frozen = jax.tree.unflatten(treedef, [_filled(a, i) for i, a in enumerate(leaves)])
    state = ts.init_state(L.init_lora(frozen, lora, jax.random.key(0)))
    data = shard_batch(synthetic_batch(SyntheticData(seed=0), cfg.vocab_size, 1, seq, 0), ts.batch_sharding)
    jax.block_until_ready((frozen, state))
    before = _memory_stats() or {}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        state, metrics = step(state, frozen, data)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        part.error("qlora step", message=f"loss is {loss}")
    stats = _memory_stats()
    peak = stats["peak_bytes_in_use"] if stats else None
    t = statistics.median(times[1:])
    frozen_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(frozen))
    part.row(bench="qlora_step_memory", model=cfg.name, seq=seq, batch=1, lora_rank=lora.rank,
             quant=QLORA["quant"]["kind"], device_peak_gib=peak / GIB if peak else None,
             in_use_before_step_gib=before.get("bytes_in_use", 0) / GIB or None,
             compiled_plan_gib=plan_bytes / GIB if plan_bytes else None, cpu_plan_gib=CPU_PLAN_QLORA_GIB,
             frozen_weights_gib=frozen_bytes / GIB, trainable_params=L.count_trainable(adapters), step_s=t,
             tokens_per_s=seq / t, loss=loss, compile_s=compile_s,
             memory_stats="device" if stats else "not available on this backend (the compiled plan stands in)")
    part.results = {"device_peak_gib": peak / GIB if peak else None, "cpu_plan_gib": CPU_PLAN_QLORA_GIB,
                    "compiled_plan_gib": plan_bytes / GIB if plan_bytes else None, "step_s": t}
    if peak:
        part.line(f"{cfg.name} QLoRA step peak memory, seq {seq}", f"{peak / GIB:.2f} GiB ({peak / 1e9:.2f} GB)",
                  f"CPU plan {CPU_PLAN_QLORA_GIB} GiB; this compiler's plan {plan_bytes / GIB:.2f} GiB")
    else:
        part.line(f"{cfg.name} QLoRA step, compiled plan, seq {seq}", f"{plan_bytes / GIB:.3f} GiB",
                  "no device memory statistics on this backend")


def decode(part: Part):
    import jax
    import numpy as np

    import intern_jax
    from intern_jax.model import internlm2
    from intern_jax.train.metrics import matmul_params

    prompt_len, new_tokens = (16, 8) if part.smoke else (1024, 128)
    batches = (1, 4) if part.smoke else (1, 64)
    copy = part.calibration.get("copy_gb_per_s")
    cfg = _model_config("internlm2_1_8b.py", part.smoke, param_dtype="bfloat16")
    # the public face: a Decoder lays the weights out for decoding once and keeps the compiled executables,
    # so the second generate of a shape runs without compiling
    decoder = intern_jax.Decoder(internlm2.init(cfg, jax.random.key(0)), cfg)
    sampling = intern_jax.SamplingParams(max_new_tokens=new_tokens)  # greedy, no stop ids: every row runs to the end
    weight_bytes = matmul_params(cfg) * 2
    kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
    rng = np.random.default_rng(0)
    for batch in batches:
        prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()
        try:
            first = intern_jax.generate(decoder, prompts, sampling)  # compiles
            result = intern_jax.generate(decoder, prompts, sampling)
        except Exception as e:  # noqa: BLE001 - the other batch size still runs
            part.error(f"generate at batch {batch}", e)
            continue
        if result.compile_s > 0:
            part.error(f"generate at batch {batch}", message=f"the timed run compiled again ({result.compile_s:.1f} s)")
        steps = max(result.num_generated) - 1  # the first token comes from the prefill
        step_s = result.decode_s / steps
        mean_context = prompt_len + (steps + 1) / 2
        step_bytes = weight_bytes + batch * mean_context * kv_bytes_per_token
        roofline_s = step_bytes / (copy * 1e9) if copy else None
        part.row(bench="decode", model=cfg.name, batch=batch, prompt=prompt_len, new_tokens=new_tokens,
                 decode_steps=steps, step_ms=step_s * 1e3, tokens_per_s=batch / step_s,
                 prefill_s=result.prefill_s, compile_s=first.compile_s, timed_run_compile_s=result.compile_s,
                 bytes_per_step=step_bytes,
                 roofline_ms=roofline_s * 1e3 if roofline_s else None,
                 share_of_roofline=roofline_s / step_s if roofline_s else None)
        part.results[f"batch{batch}_step_ms"] = step_s * 1e3
        part.results[f"batch{batch}_share_of_roofline"] = roofline_s / step_s if roofline_s else None
        part.line(f"{cfg.name} bf16 decode step, batch {batch}, context {prompt_len}+{new_tokens}",
                  f"{step_s * 1e3:.2f} ms ({batch / step_s:,.0f} tokens/s)",
                  f"HBM roofline {roofline_s * 1e3:.2f} ms ({roofline_s / step_s:.0%})" if roofline_s
                  else "copy bandwidth not measured")
    part.results["w4_vs_bf16_single_stream"] = (
        "not available yet: the public API loads no W4 weights for decoding (the W4A16 kernel is not wired "
        "into the model)")
    part.line("W4 vs bf16 single-stream decode", "not available yet", "no W4 decode path in the public API")


# Run in this order: cheapest first, the 1.8B train step (two large compiles) last, so that a slow
# compile costs the fewest figures when the suite's budget runs out.
PARTS = {  # name: (function, time box on a device in s, time box for --smoke in s)
    "calibration": (calibration, 45, 60),
    "flash": (flash, 120, 90),
    "paged": (paged, 60, 60),
    "qmatmul": (qmatmul, 90, 90),
    "qlora": (qlora, 120, 90),
    "decode": (decode, 150, 90),
    "train": (train, 180, 90),
}
NEEDS_CALIBRATION = {"paged", "qmatmul", "train", "decode"}
