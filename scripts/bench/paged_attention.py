"""Paged attention on CPU: the native kernel (pages read in place) against XLA's gather-then-attend.

    python scripts/bench/paged_attention.py [--rows 1,8,32] [--context 256,1024] [--repeats 10]

SmolLM2-135M's attention shapes (30 layers, 9 query heads over 3 kv heads of 64, pages of 64 tokens, a pool
of 1,024 pages), float32: one decode step's attention over every layer, each of ``--rows`` sequences
``--context`` tokens long (pages drawn at random from the pool). Both paths run in one jitted function
per point, after a warm-up call; the figure is the median of ``--repeats`` calls, and the largest
difference between the two outputs is printed beside it. Prints a JSON line per point and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from machine import cpu_name  # this directory: run as a script

LAYERS, KV_HEADS, HEADS, HEAD_DIM, PAGE, POOL = 30, 3, 9, 64, 64, 1024


def median_ms(fn, *args, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def point(rows: int, context: int, repeats: int, rng) -> dict:
    import jax
    import jax.numpy as jnp

    from intern_jax.model.kv_cache import PagedKV, Step

    pages_per_seq = -(-context // PAGE)
    shape = (LAYERS, KV_HEADS, POOL, PAGE, HEAD_DIM)
    k, v = (jnp.asarray(rng.standard_normal(shape, np.float32)) for _ in range(2))
    tables = rng.permutation(POOL)[: rows * pages_per_seq].reshape(rows, pages_per_seq).astype(np.int32)
    lengths = np.full(rows, context, np.int32)
    step = Step(jnp.asarray(lengths - 1)[:, None], jnp.ones((rows, 1), bool), jnp.asarray(lengths),
                jnp.ones((rows,), jnp.int32))
    q = jnp.asarray(rng.standard_normal((rows, 1, HEADS, HEAD_DIM), np.float32))
    out = {}
    for native in (True, False):
        cache = PagedKV(k, v, None, None, jnp.asarray(tables), jnp.asarray(lengths), native)
        fn = jax.jit(lambda cache, q: jnp.stack([cache._attend(i, q, step, "xla") for i in range(LAYERS)]))
        out[native] = (median_ms(fn, cache, q, repeats=repeats), np.asarray(fn(cache, q)))
    return {"rows": rows, "context": context, "native_ms": round(out[True][0], 2),
            "xla_gather_ms": round(out[False][0], 2), "speedup": round(out[False][0] / out[True][0], 2),
            "max_abs_diff": float(np.abs(out[True][1] - out[False][1]).max())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,8,32")
    ap.add_argument("--context", default="256,1024")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)

    import jax

    from kernels import cpu as native

    if not native.available():
        raise SystemExit(f"the native kernels are unavailable here: {native._state.get('error', native.ENV + '=0')}")
    rng = np.random.default_rng(0)
    points = [point(int(r), int(c), args.repeats, rng) for c in args.context.split(",") for r in args.rows.split(",")]
    meta = {"cpu": cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}
    for p in points:
        print(json.dumps({**meta, **p}))
    print("\n| rows | context | native ms | XLA gather ms | speedup | max abs diff |\n|---|---|---|---|---|---|")
    for p in points:
        print(f"| {p['rows']} | {p['context']} | {p['native_ms']} | {p['xla_gather_ms']} | {p['speedup']}x | "
              f"{p['max_abs_diff']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
