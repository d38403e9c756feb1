"""Evaluate models on dataset configs and print one summary table (dataset, version, metric, mode, a column per model).

    python scripts/evaluate.py --model PATH [--model PATH2 ...] --datasets arith_mc,arith_qa --output DIR
        [--config configs/eval/X.py ...] [--data mine.jsonl ...] [--limit N] [--num-fewshot K] [--batch-size B]
        [--reuse] [--json]

``--datasets`` names configs in configs/eval/; ``--config`` gives config files. ``--output DIR`` receives
predictions/, results/, cache/ and summary.md / .csv / .json; ``--reuse`` reads answers already in
DIR/cache back instead of recomputing them; ``--json`` prints the results as JSON instead of the table.
An OpenAI-compatible endpoint (``--url``) is not supported yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from intern_jax import cli  # light: no jax

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "eval"


@cli.entry("evaluate.py")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True,
                    help="checkpoint (GGUF file, HF directory or native checkpoint); repeat for a side-by-side table")
    ap.add_argument("--datasets", default="", help=f"comma-separated dataset names from {CONFIG_DIR}")
    ap.add_argument("--config", action="append", default=[], help="a dataset config file (repeatable)")
    ap.add_argument("--data", action="append", default=[],
                    help="your own JSONL, no config: {question, choices, answer: INDEX} (multiple choice, scored by "
                         "log-likelihood) or {question, answer} (generation, exact match); repeatable")
    ap.add_argument("--output", help="run directory for predictions, results, the request cache and the summary")
    ap.add_argument("--limit", type=int, help="evaluate only the first N items of each dataset")
    ap.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (overrides the configs)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per scoring / generation batch")
    ap.add_argument("--reuse", action="store_true", help="read answers already cached in --output back")
    ap.add_argument("--json", action="store_true",
                    help="print the results as JSON (per model and dataset: version, mode, metrics, item count)")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)

    from intern_jax.eval import config as eval_config  # noqa: PLC0415  (imports jax through the package)

    if not args.datasets and not args.config and not args.data:
        ap.error("give --datasets NAMES, --config FILE or --data FILE.jsonl")
    if args.reuse and not args.output:
        ap.error("--reuse needs --output (the directory whose cache is read back)")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    output = cli.output_dir(args.output) if args.output else None
    datasets = eval_config.find_datasets(args.datasets, CONFIG_DIR) if args.datasets else []
    datasets += [eval_config.load_dataset_config(path) for path in args.config]
    datasets += [eval_config.data_file_config(path) for path in args.data]

    from intern_jax.checkpoint import load_model  # noqa: PLC0415
    from intern_jax.eval import DecoderLM, RequestCache, run  # noqa: PLC0415
    from intern_jax.eval.run import safe_name  # noqa: PLC0415
    from intern_jax.eval.summary import to_markdown  # noqa: PLC0415

    models, names = [], set()
    for path in args.model:
        name = safe_name(Path(path).stem if Path(path).suffix else Path(path).name)
        while name in names:
            name += "_"
        names.add(name)
        model = load_model(path)
        if model.tokenizer is None:
            raise ValueError(f"--model {path} carries no tokenizer; evaluation needs one")
        cache = RequestCache(output / "cache" / f"{name}.jsonl" if output else None, reuse=args.reuse)
        models.append(DecoderLM(model, name, batch_size=args.batch_size, cache=cache))

    def progress(what: str) -> None:
        print(f"evaluating {what}", file=sys.stderr, flush=True)

    results = run(models, datasets, output, limit=args.limit, num_fewshot=args.num_fewshot, progress=progress)
    if args.json:
        print(json.dumps({"models": [m.name for m in models], "results": results}, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(to_markdown(results, [m.name for m in models]))
    reused = sum(m.cache.hits for m in models)
    if args.reuse:
        print(f"reused {reused} cached answers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
