"""Quantized weights on the embedded SmolLM2: held-out perplexity, decode tokens/s and parameter bytes.

    python scripts/bench/quantize.py [--group-size 64] [--windows 16] [--seq-len 256] [--new-tokens 48]

In one run: the float32 model (the GGUF's Q4_1 weights expanded), W8 RTN, W4 RTN and W4 AWQ
(calibrated on the built-in calibration text; with ``wo`` on RTN, and with ``wo``'s scale searched
too), all at ``--group-size`` with the head in float32,
and the GGUF file kept packed (its own Q4_1 blocks, group 32, and the Q8_0 head). Perplexity is
over ``--windows`` windows of the built-in held-out text (standard-library docstrings disjoint from
the calibration ones); decode is batch-1 greedy, ``--new-tokens`` tokens after a warm-up run of the
same length. Prints one JSON line per model and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from machine import cpu_name  # this directory: run as a script


def perplexity(decoder, windows) -> float:
    scores = decoder.score([list(map(int, w)) for w in windows], [1] * len(windows))
    logprobs = [lp for lp, _ in scores]
    return math.exp(-sum(float(lp.sum()) for lp in logprobs) / sum(len(lp) for lp in logprobs))


def decode_rate(batch, prompt, new_tokens: int) -> float:
    """Tokens/s of ``new_tokens - 1`` greedy steps in one ``run`` after the prompt's insert."""
    from intern_jax.inference import SamplingParams

    batch.insert([0], [prompt], [SamplingParams(max_new_tokens=new_tokens)])
    t0 = time.perf_counter()
    out = batch.run(new_tokens - 1)
    rate = (new_tokens - 1) / (time.perf_counter() - t0)
    assert (out.tokens[0] >= 0).all()
    batch.release([0])
    return rate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3, help="decode timings per model, interleaved; the best is kept")
    args = ap.parse_args(argv)

    from intern_jax.checkpoint import embedded_model_path, load_model
    from intern_jax.checkpoint import quantized as qckpt
    from intern_jax.inference import Decoder
    from intern_jax.model.quantized import param_bytes

    path = embedded_model_path()
    base = load_model(path)
    tok = base.tokenizer
    windows = qckpt.token_windows(tok, qckpt.builtin_text("heldout"), args.windows, args.seq_len)
    prompt = tok.encode("The history of the printing press begins")
    variants = [("f32 (Q4_1 expanded)", lambda: (base, {}))]
    for method, bits, wo in (("rtn", 8, False), ("rtn", 4, False), ("awq", 4, False), ("awq", 4, True)):
        name = f"W{bits} {method.upper()} g{args.group_size}" + (" + wo scales" if wo else "")
        variants.append((name, lambda m=method, b=bits, wo=wo: qckpt.quantize_model(
            base, method=m, bits=b, group_size=args.group_size, calib_samples=args.calib_samples, awq_wo=wo)))
    variants.append(("GGUF Q4_1 kept packed (g32)", lambda: (load_model(path, keep_quantized=True), {})))
    rows, batches = [], []
    for name, make in variants:
        t0 = time.perf_counter()
        model, report = make()
        made = time.perf_counter() - t0
        decoder = Decoder.from_model(model)
        row = {"model": name, "param_bytes": param_bytes(model.params), "make_s": round(made, 1),
               "ppl": round(perplexity(decoder, windows), 3)}
        if "awq_error_vs_rtn" in report:
            row["awq_error_vs_rtn"] = report["awq_error_vs_rtn"]
        rows.append(row)
        batches.append(decoder.new_batch(1, 256))
        decode_rate(batches[-1], prompt, args.new_tokens)  # compiles
    # decode timings interleaved across models, best of --rounds: the machine is shared, so each model
    # meets the same background load, and the best run is the least disturbed one
    for _ in range(args.rounds):
        for row, batch in zip(rows, batches, strict=True):
            rate = decode_rate(batch, prompt, args.new_tokens)
            row["decode_tok_s"] = round(max(rate, row.get("decode_tok_s", 0.0)), 2)
    for row in rows:
        print(json.dumps(row), flush=True)
    f32 = rows[0]
    print(f"\n{cpu_name()}, load average {os.getloadavg()[0]:.1f}; held-out {len(windows)} x {args.seq_len} tokens\n")
    print("| weights | perplexity | parameter MB | decode tok/s | vs f32 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['ppl']:.3f} | {r['param_bytes'] / 1e6:.0f} | {r['decode_tok_s']:.1f} | "
              f"{r['decode_tok_s'] / f32['decode_tok_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
