"""Evaluation benchmark: our in-process multiple-choice scoring against lm-evaluation-harness' ``hf`` backend.

    python scripts/bench/eval.py [--items 500] [--choices 4] [--batch-size 32] [--seed 0]

A multiple-choice task of ``--items`` arithmetic questions x ``--choices`` options (seeded), lm-eval's
common template (context ``"Question: {q}\\nAnswer:"``, continuation ``" {choice}"``), on the embedded
SmolLM2 (f32 on both sides). Ours: ``DecoderLM`` (the one decoder's ``score``) through the task code
(``intern_jax.eval.tasks.evaluate``). Peer: lm-eval's ``HFLM`` on the same model exported as a Llama
checkpoint, its ``loglikelihood`` over the same (context, continuation) requests, with acc / acc_norm
computed as lm-eval does (argmax of the sums; of the sums divided by the continuation's length). Each
side runs once untimed on the first 8 items (warm-up: compiles, caches) and then timed on all items.
Prints a JSON line and a markdown table for docs/benchmarks.md, and whether every item's prediction agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from machine import cpu_name  # this directory: run as a script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def task_rows(n: int, choices: int, seed: int) -> list[dict]:
    """``n`` arithmetic questions with ``choices`` numeric options (one right), in the ``--data`` layout."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = int(rng.integers(2, 60)), int(rng.integers(2, 60))
        op = str(rng.choice(["+", "-", "*"]))
        right = a + b if op == "+" else a - b if op == "-" else a * b
        options = {right}
        while len(options) < choices:
            options.add(right + int(rng.integers(-12, 13)) or right + 20)
        options = [str(o) for o in rng.permutation(sorted(options))]
        rows.append({"question": f"What is {a} {op} {b}?", "choices": options, "answer": options.index(str(right))})
    return rows


def lm_eval_scores(hflm, rows) -> list[dict]:
    """lm-eval's acc / acc_norm predictions per item from ``HFLM.loglikelihood``."""
    from lm_eval.api.instance import Instance

    requests, spans = [], []
    for row in rows:
        context = f"Question: {row['question']}\nAnswer:"
        conts = [f" {c}" for c in row["choices"]]
        spans.append((len(requests), conts))
        requests += [Instance(request_type="loglikelihood", doc=row, arguments=(context, c), idx=i)
                     for i, c in enumerate(conts)]
    results = hflm.loglikelihood(requests, disable_tqdm=True)
    out = []
    for lo, conts in spans:
        ll = np.array([results[lo + i][0] for i in range(len(conts))])
        norm = ll / np.array([len(c) for c in conts])
        out.append({"loglikelihoods": ll.tolist(), "prediction": int(np.argmax(ll)),
                    "prediction_norm": int(np.argmax(norm))})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import jax
    import lm_eval
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    from intern_jax.checkpoint import embedded_model_path, load_model, save_hf
    from intern_jax.eval import DecoderLM, tasks
    from intern_jax.eval.config import data_file_config

    torch.set_num_threads(os.cpu_count() or 1)
    rows = task_rows(args.items, args.choices, args.seed)
    work = tempfile.mkdtemp(prefix="bench-eval-")
    data = os.path.join(work, "mc.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = data_file_config(data)
    items = tasks.read_items(cfg.reader, True)

    model = load_model(embedded_model_path())
    ours = DecoderLM(model, "ours", batch_size=args.batch_size)
    tasks.evaluate(ours, cfg, items[:8])  # warm-up (compiles)
    ours.cache.entries.clear()
    t0 = time.perf_counter()
    metrics, records = tasks.evaluate(ours, cfg, items)
    ours_s = time.perf_counter() - t0

    save_hf(os.path.join(work, "hf"), model.config, model.params, model.tokenizer, layout="llama")
    hflm = HFLM(pretrained=os.path.join(work, "hf"), backend="causal", device="cpu", dtype="float32",
                batch_size=args.batch_size)
    lm_eval_scores(hflm, rows[:8])  # warm-up
    t0 = time.perf_counter()
    peer = lm_eval_scores(hflm, rows)
    peer_s = time.perf_counter() - t0

    same = sum(r["prediction"] == p["prediction"] and r["prediction_norm"] == p["prediction_norm"]
               for r, p in zip(records, peer))
    diff = max(abs(a - b) for r, p in zip(records, peer) for a, b in zip(r["loglikelihoods"], p["loglikelihoods"]))
    peer_acc = 100.0 * np.mean([p["prediction"] == r["answer"] for p, r in zip(peer, rows)])
    peer_norm = 100.0 * np.mean([p["prediction_norm"] == r["answer"] for p, r in zip(peer, rows)])
    n_req = args.items * args.choices
    report = {
        "machine": cpu_name(), "cores": os.cpu_count(), "load_average": os.getloadavg(),
        "jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "lm_eval": lm_eval.__version__, "items": args.items, "choices": args.choices, "batch_size": args.batch_size,
        "ours_s": round(ours_s, 2), "lm_eval_hf_s": round(peer_s, 2), "ratio": round(ours_s / peer_s, 3),
        "ours_items_per_s": round(args.items / ours_s, 2), "lm_eval_items_per_s": round(args.items / peer_s, 2),
        "ours_acc": metrics["acc"], "ours_acc_norm": metrics["acc_norm"],
        "lm_eval_acc": round(peer_acc, 2), "lm_eval_acc_norm": round(peer_norm, 2),
        "same_predictions": f"{same}/{args.items}", "max_abs_loglikelihood_diff": round(diff, 6),
    }
    print(json.dumps(report))
    print(f"\n| peer, {args.items} items x {args.choices} choices ({n_req} requests) "
          "| wall s | items/s | acc | acc_norm |")
    print("|---|---|---|---|---|")
    print(f"| ours: DecoderLM (Decoder.score), batch {args.batch_size} | {ours_s:.2f} | {args.items / ours_s:.2f} "
          f"| {metrics['acc']:.2f} | {metrics['acc_norm']:.2f} |")
    print(f"| lm-eval {lm_eval.__version__} HFLM (transformers, torch), batch {args.batch_size} | {peer_s:.2f} | "
          f"{args.items / peer_s:.2f} | {peer_acc:.2f} | {peer_norm:.2f} |")
    print(f"\nours / lm-eval wall time: {ours_s / peer_s:.3f}x; identical predictions: {same}/{args.items}; "
          f"largest |log-likelihood difference|: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
