"""Benchmark the Pallas kernels against their peers, measured in the same run.

  python scripts/bench/kernel_speed.py [--only flash,paged,matmul] [--out FILE.json|FILE.md]

- flash attention fwd+bwd vs `jax.nn.dot_product_attention(implementation="cudnn")` and
  the XLA reference; seq 2k/4k/8k, head_dim 128, bf16, causal (goal >= 0.9x cuDNN);
- paged decode: achieved bandwidth vs the measured device-to-device copy bandwidth at
  batch 64, context 4k (goal >= 80%);
- W4A16 / W8A16 matmul at M = 1..16, 4096 x 14336 vs bf16 `jnp.dot` (goals 3x / 1.7x).
Needs a GPU; on CPU it stops unless `--cpu-smoke`, which runs tiny shapes in interpret
mode only to exercise the script (those timings mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from kernels import (
    attention_reference,
    flash_attention,
    paged_decode_attention,
    quantize_kv_int8,
    quantize_w4,
    quantize_w8,
    quantized_matmul,
)


def fwd_bwd(attn):
    """jit of (q, k, v, do) -> (out, (dq, dk, dv)) for an attention function."""

    def run(q, k, v, do):
        out, vjp = jax.vjp(attn, q, k, v)
        return out, vjp(do)

    return jax.jit(run)


def time_fn(fn, *args, iters=20, warmup=3, **kwargs):
    """Median wall time (s) of a jitted call, synchronized on its outputs."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args, **kwargs))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(nbytes, iters):
    """Device-to-device bandwidth (B/s): read + write of an `nbytes` buffer."""
    x = jnp.zeros((nbytes // 4,), jnp.float32)
    t = time_fn(jax.jit(lambda a: a + 1.0), x, iters=iters)
    return 2 * nbytes / t


def matmul_peak(n, iters):
    """bf16 matmul throughput (FLOP/s) at n x n x n."""
    a = jnp.ones((n, n), jnp.bfloat16)
    t = time_fn(jax.jit(jnp.dot), a, a, iters=iters)
    return 2 * n**3 / t


def bench_flash(seqs, batch, heads, kv_heads, head_dim, iters, on_gpu):
    rows = []
    for seq in seqs:
        keys = jax.random.split(jax.random.PRNGKey(seq), 4)
        q = jax.random.normal(keys[0], (batch, seq, heads, head_dim), jnp.bfloat16)
        k = jax.random.normal(keys[1], (batch, seq, kv_heads, head_dim), jnp.bfloat16)
        v = jax.random.normal(keys[2], (batch, seq, kv_heads, head_dim), jnp.bfloat16)
        do = jax.random.normal(keys[3], q.shape, jnp.bfloat16)

        impls = {
            "pallas": lambda q, k, v: flash_attention(q, k, v, causal=True),
            "xla": lambda q, k, v: attention_reference(q, k, v, causal=True),
        }
        if on_gpu:
            impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, is_causal=True, implementation="cudnn"
            )
        times = {name: time_fn(fwd_bwd(f), q, k, v, do, iters=iters) for name, f in impls.items()}
        # fwd: 2 matmuls, bwd: 5, each 2*seq*seq*head_dim per head; causal halves them.
        flops = 7 * 2 * batch * heads * seq * seq * head_dim / 2
        row = dict(
            bench="flash_attention_fwd_bwd",
            seq=seq,
            batch=batch,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            dtype="bfloat16",
            causal=True,
            **{f"{name}_ms": t * 1e3 for name, t in times.items()},
            pallas_tflops=flops / times["pallas"] / 1e12,
            vs_xla=times["xla"] / times["pallas"],
        )
        if "cudnn" in times:
            row["vs_cudnn"] = times["cudnn"] / times["pallas"]
        rows.append(row)
    return rows


def bench_paged(batch, context, heads, kv_heads, head_dim, page_size, copy_bw, iters):
    rows = []
    pages_per_seq = context // page_size
    num_pages = batch * pages_per_seq
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    shape = (kv_heads, num_pages, page_size, head_dim)
    k = jax.random.normal(keys[0], shape, jnp.bfloat16)
    v = jax.random.normal(keys[1], shape, jnp.bfloat16)
    tables = jax.random.permutation(keys[2], num_pages).reshape(batch, pages_per_seq)
    tables = tables.astype(jnp.int32)
    lengths = jnp.full((batch,), context, jnp.int32)
    q = jax.random.normal(keys[3], (batch, heads, head_dim), jnp.bfloat16)
    decode = jax.jit(paged_decode_attention)
    for kv_dtype in ("bfloat16", "int8"):
        if kv_dtype == "int8":
            (kq, ks), (vq, vs) = quantize_kv_int8(k), quantize_kv_int8(v)
            args, kw = (q, kq, vq, tables, lengths), dict(k_scales=ks, v_scales=vs)
            nbytes = 2 * (kq.size + ks.size * 4)
        else:
            args, kw = (q, k, v, tables, lengths), {}
            nbytes = 2 * k.size * 2
        t = time_fn(decode, *args, **kw, iters=iters)
        bandwidth = nbytes / t
        rows.append(
            dict(
                bench="paged_decode_attention",
                batch=batch,
                context=context,
                heads=heads,
                kv_heads=kv_heads,
                head_dim=head_dim,
                page_size=page_size,
                kv_dtype=kv_dtype,
                ms=t * 1e3,
                gb_per_s=bandwidth / 1e9,
                copy_gb_per_s=copy_bw / 1e9,
                fraction_of_copy=bandwidth / copy_bw,
            )
        )
    return rows


def bench_matmul(ms, d_in, d_out, iters):
    rows = []
    w = jax.random.normal(jax.random.PRNGKey(2), (d_in, d_out), jnp.bfloat16) * 0.02
    w8, s8 = jax.jit(quantize_w8)(w)
    w4, s4, z4 = jax.jit(quantize_w4, static_argnums=1)(w, 128)
    dense = jax.jit(jnp.dot)
    int8_mm = jax.jit(lambda x, w, s: quantized_matmul(x, w, s, bits=8))
    int4_mm = jax.jit(lambda x, w, s, z: quantized_matmul(x, w, s, z, bits=4, group_size=128))
    for m in ms:
        x = jax.random.normal(jax.random.PRNGKey(m), (m, d_in), jnp.bfloat16)
        t_bf16 = time_fn(dense, x, w, iters=iters)
        t_w8 = time_fn(int8_mm, x, w8, s8, iters=iters)
        t_w4 = time_fn(int4_mm, x, w4, s4, z4, iters=iters)
        rows.append(
            dict(
                bench="quantized_matmul",
                m=m,
                d_in=d_in,
                d_out=d_out,
                bf16_us=t_bf16 * 1e6,
                w8_us=t_w8 * 1e6,
                w4_us=t_w4 * 1e6,
                w8_speedup=t_bf16 / t_w8,
                w4_speedup=t_bf16 / t_w4,
                w4_gb_per_s=(w4.size + s4.size * 2 + z4.size) / t_w4 / 1e9,
            )
        )
    return rows


def to_markdown(rows, header):
    lines = [header]
    for row in rows:
        cells = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        lines.append(f"- {cells}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", default="flash,paged,matmul", help="comma-separated subset of flash,paged,matmul"
    )
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", help="write the rows to FILE.json or FILE.md")
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="off-GPU: run tiny shapes in interpret mode (timings mean nothing)",
    )
    args = parser.parse_args(argv)
    which = set(args.only.split(","))
    on_gpu = jax.default_backend() in ("gpu", "cuda", "rocm")
    if not on_gpu and not args.cpu_smoke:
        print(
            f"no GPU here (backend {jax.default_backend()!r}); these benchmarks measure "
            "compiled GPU kernels. Run on the GPU machine, or pass --cpu-smoke to "
            "exercise the script on tiny shapes."
        )
        return 0

    device = jax.devices()[0]
    meta = dict(
        device=getattr(device, "device_kind", str(device)),
        jax=jax.__version__,
        date=datetime.date.today().isoformat(),
        interpret=not on_gpu,
    )
    if on_gpu:
        shapes = dict(
            seqs=(2048, 4096, 8192),
            batch=1,
            heads=32,
            kv_heads=8,
            head_dim=128,
            paged=(64, 4096, 32, 8, 128, 16),
            ms=(1, 2, 4, 8, 16),
            mm=(4096, 14336),
            copy_bytes=1 << 30,
            peak_n=8192,
        )
    else:
        shapes = dict(
            seqs=(64,),
            batch=1,
            heads=2,
            kv_heads=1,
            head_dim=64,
            paged=(2, 64, 2, 1, 64, 16),
            ms=(1,),
            mm=(256, 256),
            copy_bytes=1 << 20,
            peak_n=256,
        )
        args.iters = min(args.iters, 2)
        print("NOTE: CPU smoke run: interpret mode, tiny shapes; timings mean nothing.")

    copy_bw = copy_bandwidth(shapes["copy_bytes"], args.iters)
    peak = matmul_peak(shapes["peak_n"], args.iters)
    meta.update(copy_gb_per_s=copy_bw / 1e9, bf16_matmul_tflops=peak / 1e12)
    print(json.dumps(meta))
    rows = []
    if "flash" in which:
        rows += bench_flash(
            shapes["seqs"],
            shapes["batch"],
            shapes["heads"],
            shapes["kv_heads"],
            shapes["head_dim"],
            args.iters,
            on_gpu,
        )
    if "paged" in which:
        rows += bench_paged(*shapes["paged"], copy_bw, args.iters)
    if "matmul" in which:
        rows += bench_matmul(shapes["ms"], *shapes["mm"], args.iters)
    for row in rows:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    if args.out:
        out = Path(args.out)
        if out.suffix == ".md":
            header = (
                f"### kernels on {meta['device']} (jax {meta['jax']}, {meta['date']}); "
                f"copy {meta['copy_gb_per_s']:.0f} GB/s, bf16 matmul "
                f"{meta['bf16_matmul_tflops']:.0f} TFLOP/s"
            )
            out.write_text(to_markdown(rows, header))
        else:
            out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
