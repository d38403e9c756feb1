"""Serving benchmark: the engine against serial ``generate`` and transformers' batched ``generate``.

    python scripts/bench/engine.py [--requests 32] [--seed 0] [--max-output 96] [--prefix-tokens 500]

LMDeploy's ``profile_throughput`` recipe on the embedded SmolLM2 (f32): prompt and output lengths are
drawn from a conversation-like (log-normal) distribution by a seeded generator; every request
generates exactly its output length (stop tokens ignored). All peers run in this one process on the
same requests, each after a warm-up pass over the same workload, so compile time is not counted:

- engine: every request submitted at once (continuous batching, ``--max-batch-size``); request/s,
  output and total tokens/s, first-token latency min/mean/max, per-token latency percentiles;
- serial: ``generate`` one request at a time (the same decoder);
- transformers: ``LlamaForCausalLM.generate`` on the same GGUF, one padded static batch of all requests
  (each batch runs to its longest output; only the requested tokens count);
- prefix caching: requests sharing a ``--prefix-tokens`` system prompt, sent one after another, with and
  without the prefix cache: mean first-token latency.

Prints a JSON line and markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

import numpy as np
from machine import cpu_name  # this directory: run as a script


def workload(tok, n: int, seed: int, max_output: int) -> list[tuple[list[int], int]]:
    """``n`` (prompt ids, output length) pairs: chat prompts of log-normal length, log-normal outputs."""
    rng = np.random.default_rng(seed)
    words = "the of a river stone light museum engine garden winter number story market bridge".split()
    out = []
    for _ in range(n):
        length = int(np.clip(rng.lognormal(3.3, 0.8), 4, 400))
        text = " ".join(rng.choice(words, length))
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True),
                         add_bos=False)
        out.append((ids, int(np.clip(rng.lognormal(3.6, 0.6), 8, max_output))))
    return out


def percentiles(xs, ps=(50, 75, 95, 99)) -> dict:
    return {f"p{p}": round(float(np.percentile(xs, p)) * 1e3, 2) for p in ps} if xs else {}


def run_engine(engine, requests) -> dict:
    """Submit every request at once; time each one's first token and the gaps between later ones."""
    from intern_jax.inference import SamplingParams

    async def one(prompt, n):
        t0 = time.perf_counter()
        stamps = []
        async for inc in engine.submit(prompt, SamplingParams(max_new_tokens=n), ignore_eos=True):
            stamps += [time.perf_counter()] * len(inc.token_ids)
        return t0, stamps

    async def all_requests():
        return await asyncio.gather(*(one(p, n) for p, n in requests))

    t0 = time.perf_counter()
    timings = asyncio.run(all_requests())
    wall = time.perf_counter() - t0
    out_tokens = sum(len(s) for _, s in timings)
    in_tokens = sum(len(p) for p, _ in requests)
    ttft = [s[0] - start for start, s in timings]
    gaps = [b - a for _, s in timings for a, b in zip(s, s[1:])]
    return {
        "requests_per_s": round(len(requests) / wall, 3),
        "output_tokens_per_s": round(out_tokens / wall, 2),
        "total_tokens_per_s": round((in_tokens + out_tokens) / wall, 2),
        "first_token_s": {"min": round(min(ttft), 3), "mean": round(statistics.mean(ttft), 3),
                          "max": round(max(ttft), 3)},
        "per_token_ms": percentiles(gaps),
        "wall_s": round(wall, 2),
        "output_tokens": out_tokens,
    }


def run_serial(decoder, requests) -> dict:
    from intern_jax.inference import SamplingParams, generate

    t0 = time.perf_counter()
    out_tokens = 0
    for prompt, n in requests:
        out_tokens += generate(decoder, [prompt], SamplingParams(max_new_tokens=n)).num_generated[0]
    wall = time.perf_counter() - t0
    return {"output_tokens_per_s": round(out_tokens / wall, 2), "wall_s": round(wall, 2), "output_tokens": out_tokens}


def run_transformers(hf, requests, pad_id: int) -> dict:
    import torch

    width = max(len(p) for p, _ in requests)
    ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, _) in enumerate(requests):  # left padding, as generation needs
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    longest = max(n for _, n in requests)
    t0 = time.perf_counter()
    with torch.no_grad():
        hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=longest, min_new_tokens=longest,
                    pad_token_id=pad_id)
    wall = time.perf_counter() - t0
    useful = sum(n for _, n in requests)
    return {"output_tokens_per_s": round(useful / wall, 2), "wall_s": round(wall, 2), "output_tokens": useful}


def prefix_latency(decoder, tok, prefix_tokens: int, caching: bool, repeats: int = 6) -> float:
    """Mean first-token latency of requests sharing a long system prompt, sent one after another."""
    from intern_jax.inference import SamplingParams
    from intern_jax.serve import Engine, EngineConfig

    system = " ".join(["Answer as the museum guide of the hall of rivers, briefly and kindly."] * 60)
    ids = tok.encode(system, add_bos=False)[:prefix_tokens]
    system = tok.decode(ids)
    engine = Engine(decoder, EngineConfig(max_batch_size=4, max_num_tokens=1024, block_size=64,
                                          enable_prefix_caching=caching)).start()

    async def first_token(question):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        t0 = time.perf_counter()
        async for _ in engine.submit(messages, SamplingParams(max_new_tokens=4), ignore_eos=True):
            return time.perf_counter() - t0

    async def sequence(tag):
        return [await first_token(f"{tag} question number {i}: where is the exit?") for i in range(repeats)]

    try:
        asyncio.run(sequence("warm-up"))
        return statistics.mean(asyncio.run(sequence("timed"))[1:])  # the first one fills the cache
    finally:
        engine.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-output", type=int, default=96)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--prefix-tokens", type=int, default=500)
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args(argv)

    import jax

    from intern_jax.checkpoint import embedded_model_path, load_model
    from intern_jax.inference import Decoder
    from intern_jax.serve import Engine, EngineConfig

    path = embedded_model_path()
    model = load_model(path, dtype="float32")
    decoder = Decoder.from_model(model)
    tok = model.tokenizer
    requests = workload(tok, args.requests, args.seed, args.max_output)
    # distinct prompts, as profile_throughput's: the prefix cache has its own measurement below (and would
    # make the timed pass's shapes differ from the warm-up's)
    engine = Engine(decoder, EngineConfig(max_batch_size=args.max_batch_size, max_num_tokens=512,
                                          block_size=64, enable_prefix_caching=False)).start()
    try:
        run_engine(engine, requests)  # warm-up: compiles the shapes this workload needs
        compiled = decoder.num_executables
        ours = run_engine(engine, requests)
        ours["compiled_during_timing"] = decoder.num_executables - compiled
        stats = engine.stats()
    finally:
        engine.close()
    run_serial(decoder, requests[:4])  # warm-up
    serial = run_serial(decoder, requests)
    report = {
        "model": path.name, "dtype": "float32", "cpu": cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"), "requests": args.requests, "seed": args.seed,
        "prompt_tokens": sum(len(p) for p, _ in requests), "output_tokens": sum(n for _, n in requests),
        "engine": ours, "engine_stats": stats, "serial_generate": serial,
        "engine_vs_serial": round(ours["output_tokens_per_s"] / serial["output_tokens_per_s"], 2),
    }
    if not args.skip_transformers:
        import torch

        from intern_jax.testing import load_transformers_gguf

        torch.set_num_threads(os.cpu_count() or 1)
        hf = load_transformers_gguf(path)
        run_transformers(hf, requests[:2], tok.stop_ids and min(tok.stop_ids) or 0)  # warm-up
        theirs = run_transformers(hf, requests, tok.stop_ids and min(tok.stop_ids) or 0)
        report["transformers_batched"] = theirs
        report["engine_vs_transformers"] = round(ours["output_tokens_per_s"] / theirs["output_tokens_per_s"], 2)
    with_cache = prefix_latency(decoder, tok, args.prefix_tokens, True)
    without = prefix_latency(decoder, tok, args.prefix_tokens, False)
    report["prefix_first_token_s"] = {"with_cache": round(with_cache, 3), "without": round(without, 3),
                                      "speedup": round(without / with_cache, 2)}
    print(json.dumps(report))
    print("\n| peer | output tok/s | wall s |\n|---|---|---|")
    print(f"| engine (continuous batching, {args.max_batch_size} slots) | {ours['output_tokens_per_s']} "
          f"| {ours['wall_s']} |")
    print(f"| serial generate | {serial['output_tokens_per_s']} | {serial['wall_s']} |")
    if "transformers_batched" in report:
        t = report["transformers_batched"]
        print(f"| transformers batched generate | {t['output_tokens_per_s']} | {t['wall_s']} |")
    print(f"\nengine: {ours['requests_per_s']} req/s, total {ours['total_tokens_per_s']} tok/s, first token "
          f"{ours['first_token_s']}, per-token ms {ours['per_token_ms']}")
    p = report["prefix_first_token_s"]
    print(f"prefix cache ({args.prefix_tokens}-token system prompt): first token {p['with_cache']} s with, "
          f"{p['without']} s without ({p['speedup']}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
