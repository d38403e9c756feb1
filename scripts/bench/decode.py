"""Decode benchmark: batch-1 greedy decode of a GGUF model (f32) against transformers' ``generate``.

    python scripts/bench/decode.py [--model PATH] [--new-tokens 64] [--repeats 2]

Both sides decode the same chat prompts in the same run for exactly ``--new-tokens`` tokens
(stop tokens ignored). transformers' decode rate is (N - 1) / (t(N) - t(1)), which takes
its prefill out; ours is timed per phase by ``generate``. Also reports our prefill tokens/s,
batch-8 decode throughput and compile time. Prints a JSON line and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from machine import cpu_name  # this directory: run as a script

QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "Give me ten tips for learning a new language.",
    "Describe the water cycle in detail.",
    "What are the main causes of inflation?",
    "Write a poem about autumn leaves.",
    "How do vaccines train the immune system?",
    "Summarize the plot of a heist movie you invent.",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file (default: the embedded SmolLM2)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=3, help="batch-1 prompts to time")
    args = ap.parse_args(argv)

    import jax
    import torch

    from intern_jax.checkpoint import embedded_model_path, load_model
    from intern_jax.inference import Decoder, SamplingParams, encode_prompt, generate
    from intern_jax.testing import load_transformers_gguf

    path = Path(args.model) if args.model else embedded_model_path()
    n = args.new_tokens
    model = load_model(path, dtype="float32")
    decoder = Decoder.from_model(model)
    tok = model.tokenizer
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    greedy = SamplingParams(max_new_tokens=n)  # no stop ids: exactly n tokens

    compile_b1 = generate(decoder, [prompts[0]], greedy).compile_s
    ours, ours_prefill, agree = [], [], []
    hf = load_transformers_gguf(path)
    torch.set_num_threads(os.cpu_count() or 1)
    theirs = []
    for p in prompts[: args.prompts]:
        r = generate(decoder, [p], greedy)
        ours.append(r.decode_tokens_per_s)
        ours_prefill.append(r.prefill_tokens_per_s)
        ids = torch.tensor([p])
        with torch.no_grad():
            hf.generate(ids, do_sample=False, max_new_tokens=2, min_new_tokens=2)  # warm-up
            t0 = time.perf_counter()
            hf.generate(ids, do_sample=False, max_new_tokens=1, min_new_tokens=1)
            t1 = time.perf_counter()
            out = hf.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n)
            t2 = time.perf_counter()
        theirs.append((n - 1) / ((t2 - t1) - (t1 - t0)))
        agree.append(out[0, len(p):].tolist() == r.tokens[0])

    batch8 = generate(decoder, prompts[:8], greedy)  # compile
    compile_b8 = batch8.compile_s
    batch8 = generate(decoder, prompts[:8], greedy)
    report = {
        "model": path.name,
        "dtype": "float32",
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "new_tokens": n,
        "ours_decode_tokens_per_s": round(statistics.median(ours), 2),
        "transformers_decode_tokens_per_s": round(statistics.median(theirs), 2),
        "ratio": round(statistics.median(ours) / statistics.median(theirs), 2),
        "ours_prefill_tokens_per_s": round(statistics.median(ours_prefill), 1),
        "ours_batch8_decode_tokens_per_s": round(batch8.decode_tokens_per_s, 2),
        "compile_s_batch1": round(compile_b1, 1),
        "compile_s_batch8": round(compile_b8, 1),
        "greedy_tokens_equal_transformers": agree,
    }
    print(json.dumps(report))
    print()
    print("| measure | value |")
    print("|---|---|")
    for key, value in report.items():
        print(f"| {key} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
