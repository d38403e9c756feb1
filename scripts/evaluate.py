"""Evaluate models on dataset configs and print one summary table (dataset, version, metric, mode, a column per model).

    python scripts/evaluate.py --model PATH [--model PATH2 ...] --datasets arith_mc,arith_qa --output DIR
        [--url http://HOST:PORT/v1 [--api-key KEY] [--served-model NAME] [--tokenizer PATH]]
        [--config configs/eval/X.py ...] [--data mine.jsonl ...] [--limit N] [--num-fewshot K] [--batch-size B]
        [--reuse] [--json] [--workers N | --partition W/N | --merge N] [--judge-model PATH | --judge-url URL]
        [--deployments fp,w8,w4,awq4,kv8,awq4+kv8 [--calib-data FILE|embedded] [--calib-samples N]]

``--datasets`` names configs in configs/eval/; ``--config`` gives config files. ``--output DIR`` receives
predictions/, results/, cache/ and summary.md / .csv / .json; ``--reuse`` reads answers already in
DIR/cache back instead of recomputing them; ``--json`` prints the results as JSON instead of the table.
``--url`` evaluates an OpenAI-compatible endpoint (log-likelihoods from /v1/completions with echo and
logprobs, generations from chat or text completions). ``--workers N`` runs N partitions of the items in
parallel processes and merges them; ``--partition W/N`` runs one (a SLURM array task), ``--merge N``
merges N finished partitions (docs/eval.md). Datasets with a judge config (``judge_single``, ``judge_pairwise``)
have their generated answers rated or compared by ``--judge-model`` / ``--judge-url``.
``--deployments`` evaluates deployment variants of each --model side by side, built in memory from the one
loaded model (``fp``, ``w8``, ``w4``, ``awq4``, ``kv8`` and ``WEIGHTS+kv8``), one column ``MODEL[variant]`` each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from intern_jax import cli  # light: no jax

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "eval"


@cli.entry("evaluate.py")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[],
                    help="checkpoint (GGUF file, HF directory or native checkpoint); repeat for a side-by-side table")
    ap.add_argument("--url", action="append", default=[],
                    help="an OpenAI-compatible API's base URL, e.g. http://127.0.0.1:8000/v1 (repeatable)")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                    help="the endpoint's API key (default: $OPENAI_API_KEY)")
    ap.add_argument("--served-model", help="the model name the endpoint knows (default: the first of /v1/models)")
    ap.add_argument("--tokenizer", help="a tokenizer (HF directory, tokenizer.model or GGUF) to send token ids to the "
                                        "endpoint, split exactly as in process (default: send text)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight per endpoint")
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
    ap.add_argument("--group", action="append", default=[],
                    help="NAME=a,b,c: a summary row averaging the first metric of datasets a, b, c (repeatable)")
    ap.add_argument("--contamination", action="append", default=[],
                    help="a corpus (JSONL with 'text', plain text, or a directory of them): report each dataset's "
                         "share of items with a 13-gram in it and the scores on the clean items (repeatable)")
    ap.add_argument("--judge-model", help="the judge of datasets with a judge config (a checkpoint, as --model)")
    ap.add_argument("--judge-url", help="the judge as an OpenAI-compatible endpoint (as --url; --api-key applies)")
    ap.add_argument("--workers", type=int, default=1, help="run N partitions of the items in parallel processes")
    ap.add_argument("--partition", help="W/N: run only partition W of N (0-based) into --output, for --merge N")
    ap.add_argument("--merge", type=int, help="merge N finished partitions in --output into the results and summary")
    ap.add_argument("--deployments",
                    help="comma-separated deployment variants of each --model, one summary column each: fp (as "
                         "loaded), w8 / w4 (round-to-nearest weights), awq4 (AWQ 4-bit weights), kv8 (int8 KV "
                         "cache), WEIGHTS+kv8 (both); default: the model as loaded only")
    ap.add_argument("--calib-data", default="embedded",
                    help="--deployments awq4: calibration text file (UTF-8), or 'embedded' for the built-in text")
    ap.add_argument("--calib-samples", type=int, default=8, help="--deployments awq4: calibration windows")
    ap.add_argument("--calib-seq-len", type=int, default=256, help="--deployments awq4: tokens per window")
    ap.add_argument("--quant-group-size", type=int,
                    help="--deployments: input rows per weight scale (default: 128, or the largest power of two "
                         "dividing every projection's input)")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)

    from intern_jax.eval import config as eval_config  # noqa: PLC0415  (imports jax through the package)

    if not args.datasets and not args.config and not args.data:
        ap.error("give --datasets NAMES, --config FILE or --data FILE.jsonl")
    if not args.model and not args.url:
        ap.error("give --model PATH or --url http://HOST:PORT/v1")
    partition = parse_partition(args.partition) if args.partition else None
    groups = parse_groups(args.group)
    if sum(x is not None for x in (partition, args.merge)) + (args.workers != 1) > 1:
        ap.error("--workers, --partition and --merge exclude each other")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if (partition or args.merge or args.workers > 1) and not args.output:
        ap.error("--workers, --partition and --merge need --output (where the partitions meet)")
    if args.reuse and not args.output:
        ap.error("--reuse needs --output (the directory whose cache is read back)")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.deployments is not None:
        from intern_jax.eval.deployments import parse_deployments  # noqa: PLC0415

        args.deployments = parse_deployments(args.deployments)
        if args.url or not args.model:
            ap.error("--deployments builds variants of in-process models: give --model, not --url")
        if args.calib_samples < 1 or args.calib_seq_len < 2:
            raise ValueError(f"--calib-samples must be >= 1 and --calib-seq-len >= 2, got {args.calib_samples} "
                             f"and {args.calib_seq_len}")
    output = cli.output_dir(args.output) if args.output else None
    datasets = eval_config.find_datasets(args.datasets, CONFIG_DIR) if args.datasets else []
    datasets += [eval_config.load_dataset_config(path) for path in args.config]
    datasets += [eval_config.data_file_config(path) for path in args.data]
    if args.judge_model and args.judge_url:
        ap.error("give one judge: --judge-model or --judge-url")
    if any(cfg.judge is not None for cfg in datasets) and (partition or args.merge or args.workers > 1):
        ap.error("judged datasets run in one process: drop --workers / --partition / --merge")

    from intern_jax.eval import run  # noqa: PLC0415
    corpus = None
    if args.contamination:
        from intern_jax.eval.contamination import corpus_ngrams  # noqa: PLC0415

        corpus = corpus_ngrams(args.contamination)
    from intern_jax.eval.run import check_partition, merge  # noqa: PLC0415
    from intern_jax.eval.summary import to_markdown  # noqa: PLC0415

    judge = None
    if args.merge is not None or args.workers > 1:
        count = args.merge if args.merge is not None else args.workers
        check_partition(0, count)
        names = [name for name, _ in model_specs(args, load=False)]
        if args.workers > 1:
            run_partitions(argv if argv is not None else sys.argv[1:], args.workers)
        results = merge(output, names, datasets, count, num_fewshot=args.num_fewshot, groups=groups,
                        limit=args.limit, contamination=corpus)
        models = [SimpleNamespace(name=n, cache=None) for n in names]
    else:
        models = [model for _, model in model_specs(args, load=True, output=output, partition=partition)]

        def progress(what: str) -> None:
            print(f"evaluating {what}", file=sys.stderr, flush=True)

        judge = judge_model(args, output) if (args.judge_model or args.judge_url) else None
        results = run(models, datasets, output, limit=args.limit, num_fewshot=args.num_fewshot, progress=progress,
                      partition=partition, groups=groups, contamination=corpus, judge=judge)

        if partition is not None:
            print(f"partition {partition[0]} of {partition[1]} written to {output}/partitions", file=sys.stderr)
            return 0
    names = [m.name for m in models]
    if args.json:
        print(json.dumps({"models": names, "results": results}, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(to_markdown(results, names))
    reused = sum(m.cache.hits for m in [*models, judge] if m is not None and m.cache is not None)
    if args.reuse:
        print(f"reused {reused} cached answers", file=sys.stderr)
    return 0


def parse_groups(specs: list[str]) -> dict[str, list[str]]:
    groups = {}
    for spec in specs:
        name, _, members = spec.partition("=")
        members = [m.strip() for m in members.split(",") if m.strip()]
        if not name.strip() or not members:
            raise ValueError(f"--group {spec!r}: give NAME=dataset1,dataset2")
        groups[name.strip()] = members
    return groups


def parse_partition(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--partition {text!r}: give W/N, e.g. 0/4 (partition W of N, counted from 0)") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--partition {text!r}: need 0 <= W < N")
    return index, count


def model_specs(args, *, load: bool, output=None, partition=None) -> list[tuple[str, object]]:
    """``(name, model or None)`` for every --model and --url, names unique and usable as file names."""
    from intern_jax.eval import DecoderLM, RequestCache  # noqa: PLC0415
    from intern_jax.eval.endpoint import EndpointLM  # noqa: PLC0415
    from intern_jax.eval.run import safe_name  # noqa: PLC0415

    specs, names = [], set()

    def unique(name: str) -> str:
        name = safe_name(name)
        while name in names:
            name += "_"
        names.add(name)
        return name

    def cache(name: str):
        if output is None:
            return None
        stem = name if partition is None else f"{name}.part-{partition[0]}-of-{partition[1]}"
        return RequestCache(output / "cache" / f"{stem}.jsonl", reuse=args.reuse)

    for path in args.model:
        name = unique(Path(path).stem if Path(path).suffix else Path(path).name)
        if getattr(args, "deployments", None):
            specs += deployment_specs(args, path, name, load=load, cache=lambda n: cache(safe_name(n)))
            continue
        model = None
        if load:
            from intern_jax.checkpoint import load_model  # noqa: PLC0415

            loaded = load_model(path)
            if loaded.tokenizer is None:
                raise ValueError(f"--model {path} carries no tokenizer; evaluation needs one")
            model = DecoderLM(loaded, name, batch_size=args.batch_size, cache=cache(name))
        specs.append((name, model))
    tokenizer = None
    if args.url and args.tokenizer:
        from intern_jax.tokenizer import load_tokenizer  # noqa: PLC0415

        tokenizer = load_tokenizer(args.tokenizer)
    for url in args.url:
        lm = EndpointLM(url, served_model=args.served_model, api_key=args.api_key, tokenizer=tokenizer,
                        batch_size=args.batch_size, concurrency=args.concurrency)
        lm.name = unique(lm.name)
        lm.cache = cache(lm.name) or lm.cache
        specs.append((lm.name, lm))
    return specs


def deployment_specs(args, path, name: str, *, load: bool, cache) -> list[tuple[str, object]]:
    """``(NAME[variant], model or None)`` for each of ``--deployments`` of the model at ``path``."""
    from intern_jax.eval.deployments import Settings, deployment_models  # noqa: PLC0415

    names = [f"{name}[{dep.name}]" for dep in args.deployments]
    if not load:
        return [(n, None) for n in names]
    from intern_jax.checkpoint import load_model  # noqa: PLC0415

    loaded = load_model(path)
    if loaded.tokenizer is None:
        raise ValueError(f"--model {path} carries no tokenizer; evaluation needs one")
    calib_text = None
    if args.calib_data != "embedded":
        calib_text = cli.utf8_text(Path(args.calib_data).read_text(encoding="utf-8"), f"--calib-data {args.calib_data}")
    settings = Settings(group_size=args.quant_group_size, calib_text=calib_text, calib_samples=args.calib_samples,
                        calib_seq_len=args.calib_seq_len)
    models = deployment_models(loaded, args.deployments, name, batch_size=args.batch_size, settings=settings,
                               cache=cache)
    return [(m.name, m) for m in models]


def judge_model(args, output):
    """The judge (``--judge-model`` in process or ``--judge-url``), its answers cached in OUT/cache/judge-NAME.jsonl."""
    from intern_jax.eval import DecoderLM, RequestCache  # noqa: PLC0415
    from intern_jax.eval.endpoint import EndpointLM  # noqa: PLC0415
    from intern_jax.eval.run import safe_name  # noqa: PLC0415

    if args.judge_model:
        from intern_jax.checkpoint import load_model  # noqa: PLC0415

        path = Path(args.judge_model)
        loaded = load_model(args.judge_model)
        if loaded.tokenizer is None:
            raise ValueError(f"--judge-model {path} carries no tokenizer; a judge needs one")
        judge = DecoderLM(loaded, "judge-" + safe_name(path.stem if path.suffix else path.name),
                          batch_size=args.batch_size)
    else:
        judge = EndpointLM(args.judge_url, served_model=args.served_model, api_key=args.api_key,
                           batch_size=args.batch_size, concurrency=args.concurrency)
        judge.name = "judge-" + safe_name(judge.name)
    if output is not None:
        judge.cache = RequestCache(output / "cache" / f"{judge.name}.jsonl", reuse=args.reuse)
    return judge


def run_partitions(argv: list[str], workers: int) -> None:
    """This command once per partition, in parallel processes; a failed one ends the run with its error."""
    import subprocess  # noqa: PLC0415

    base, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--workers", "--json"):
            skip = a == "--workers"
            continue
        if a.startswith("--workers="):
            continue
        base.append(a)
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *base, "--partition", f"{w}/{workers}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for w in range(workers)]
    failed = []
    for w, proc in enumerate(procs):
        _, err = proc.communicate()
        sys.stderr.write(err)
        if proc.returncode != 0:
            failed.append(f"partition {w}: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    if failed:
        raise ValueError("a partition failed (" + "; ".join(failed) + "); fix it and rerun with --reuse")


if __name__ == "__main__":
    sys.exit(main())
