"""What a grammar mask costs a decode step: masked vs unmasked steps of the same batch, in one run.

    python scripts/bench/structured.py [--slots 8] [--steps 64] [--rounds 3]

On the embedded SmolLM2 (f32), a dense batch of ``--slots`` sequences is prefilled once; then rounds of
``--steps`` decode steps alternate between the unmasked step (the peer: what a batch without structured
requests runs) and the masked step with one row following a JSON-schema grammar (llguidance: the host
fills that row's bitmask, the other rows are all ones, the device applies the masks before sampling and
the matcher consumes each token). Prints ms per step (median over rounds) and the ratio, and the host
time to fill one row's 49k-token bitmask. Numbers go to docs/benchmarks.md with machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from intern_jax.checkpoint import embedded_model_path, load_model
    from intern_jax.inference import Decoder, SamplingParams, encode_prompt
    from intern_jax.inference.sampling import bitmask_width
    from intern_jax.serve.structured import Grammars

    model = load_model(embedded_model_path())
    decoder = Decoder.from_model(model)
    tok = decoder.tokenizer
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "notes": {"type": "string"}},
              "required": ["name", "notes"]}
    grammars = Grammars(tok, decoder.config.vocab_size)
    grammar = grammars.json_schema(schema)
    prompt = encode_prompt(tok, [{"role": "user", "content": "Describe a person in JSON."}])
    budget = args.steps * (2 * args.rounds + 1) + 8
    sampling = [SamplingParams(max_new_tokens=budget)] * args.slots
    width = bitmask_width(decoder.config.vocab_size)

    batch = decoder.new_batch(args.slots, len(prompt) + budget + 1)
    constraint = grammars.constraint(grammar)
    batch.insert(list(range(args.slots)), [prompt] * args.slots, sampling)  # row 0's grammar starts after this

    fill_seconds: list[float] = []

    def masked_step():
        nonlocal constraint
        masks = np.full((args.slots, width), -1, np.int32)
        t0 = time.perf_counter()
        constraint.fill(masks[0])
        fill_seconds.append(time.perf_counter() - t0)
        out = batch.step(masks)
        if not constraint.accept(int(out.tokens[0])) or constraint.finished:
            constraint = grammars.constraint(grammar)  # a finished or refused walk starts over
        return out

    # compile both programs outside the timings
    for fn in (batch.step, masked_step):
        fn()
    rows = {"unmasked step (peer)": [], "masked step, 1 of the rows constrained": []}
    for _ in range(args.rounds):
        for name, fn in zip(rows, (batch.step, masked_step)):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            rows[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    peer = statistics.median(rows["unmasked step (peer)"])
    print(json.dumps({"slots": args.slots, "steps": args.steps, "rounds": args.rounds,
                      "load_average": os.getloadavg()}))
    print("| decode step, SmolLM2 f32, dense batch | ms per step (median of rounds) | vs unmasked |")
    print("|---|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {statistics.median(ms):.2f} | {statistics.median(ms) / peer:.2f}x |")
    fills = np.asarray(fill_seconds) * 1e6
    print(f"bitmask fill on the host: median {np.median(fills):.1f} us, p99 {np.percentile(fills, 99):.1f} us "
          f"over {len(fills)} tokens")


if __name__ == "__main__":
    main()
