"""One evaluation run: every model on every dataset, predictions and results written as they finish.

``OUT/predictions/<model>/<dataset>.jsonl`` (one record per item and rotation: prompt, prediction,
reference, verdict), ``OUT/results/<model>/<dataset>.json`` (metrics, version, item count, seconds),
``OUT/cache/<model>.jsonl`` (answers by request hash; read back with ``reuse``) and the summary.
Models are loaded by the caller; this module only drives ``EvalModel`` requests.

Partitions (``--workers N``, or one SLURM array task each): partition ``w`` of ``n`` scores the items
whose number is ``w`` modulo ``n`` and writes ``OUT/partitions/<w>-of-<n>/<model>/<dataset>.jsonl``;
``merge`` reads all ``n`` back, orders the records as one process would, and computes the metrics from
them, so the merged outputs are those of a single run. Judged datasets (``eval.judge``) run in one process.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

from intern_jax.eval import judge as judging
from intern_jax.eval import tasks
from intern_jax.eval.config import DatasetConfig, FewShotConfig
from intern_jax.eval.summary import with_groups, write_summary


def safe_name(name: str) -> str:
    """A model or dataset name usable as a file name."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "model"


def with_fewshot(cfg: DatasetConfig, num_fewshot: int | None) -> DatasetConfig:
    """``--num-fewshot K``: K examples (drawn with the config's seed, or its fixed ones cut to K); 0: zero-shot."""
    if num_fewshot is None:
        return cfg
    if num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    fs = cfg.fewshot
    if num_fewshot == 0:
        fs = FewShotConfig(path=fs.path)
    elif fs.mode == "fixed" and fs.indices:
        fs = dataclasses.replace(fs, indices=fs.indices[:num_fewshot], k=num_fewshot)
    else:
        fs = dataclasses.replace(fs, mode="random" if fs.mode == "zero" else fs.mode, k=num_fewshot)
    return dataclasses.replace(cfg, fewshot=fs)


def evaluate_dataset(model, cfg: DatasetConfig, limit: int | None = None,
                     partition: tuple[int, int] | None = None) -> tuple[dict, list[dict]]:
    """``(result, predictions)`` of one model on one dataset (its first ``limit`` items; with ``partition``
    only that partition's, and no metrics)."""
    items = tasks.read_items(cfg.reader, cfg.multiple_choice)
    pool = items  # few-shot examples come from the whole set, even with a limit
    if cfg.fewshot.path:
        pool = tasks.read_items(dataclasses.replace(cfg.reader, path=cfg.fewshot.path), cfg.multiple_choice)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        items = items[:limit]
    t0 = time.perf_counter()
    metrics, predictions = tasks.evaluate(model, cfg, items, pool, same_pool=not cfg.fewshot.path,
                                          partition=partition)
    result = {"model": model.name, "dataset": cfg.name, "version": cfg.version, "mode": cfg.infer.mode,
              "metrics": metrics, "num_items": len(items), "seconds": round(time.perf_counter() - t0, 3)}
    return result, predictions


def run(models: list, datasets: list[DatasetConfig], output: str | Path | None = None,
        limit: int | None = None, num_fewshot: int | None = None, progress=None,
        partition: tuple[int, int] | None = None, groups: dict[str, list[str]] | None = None,
        contamination: set[int] | None = None, judge=None) -> list[dict]:
    """Every model on every dataset; writes predictions, results and the summary under ``output``.
    ``partition=(w, n)``: only partition ``w`` of ``n``, written for ``merge`` (no metrics, no summary).
    ``groups``: summary groups (name -> datasets), averaged in the returned results and the summary.
    ``contamination``: a corpus's 13-gram hashes (``contamination.corpus_ngrams``): each result also gets
    ``contaminated`` (% of items) and ``clean_<metric>`` (the metrics on the other items).
    ``judge``: the ``EvalModel`` that judges datasets with a ``judge`` config (``eval.judge``): single
    grading as each model finishes; pairwise once every model has answered (the first model is the base)."""
    if partition is not None:
        check_partition(*partition)
        if output is None:
            raise ValueError("a partition needs --output (the directory the partitions are merged in)")
    _check_judging(models, datasets, judge, partition)
    results = []
    answers: dict[str, list] = {}  # pairwise sets: every model's (result, predictions), judged at the end
    for model in models:
        for cfg in datasets:
            cfg = with_fewshot(cfg, num_fewshot)
            if progress:
                progress(f"{model.name} / {cfg.name}" + (f" (partition {partition[0]} of {partition[1]})"
                                                         if partition else ""))
            result, predictions = evaluate_dataset(model, cfg, limit, partition)
            if cfg.judge is not None:
                result["mode"] = f"judge-{cfg.judge.mode}"
                if cfg.judge.mode == "pairwise":
                    answers.setdefault(cfg.name, []).append((cfg, result, predictions))
                    results.append(result)
                    continue
                if progress:
                    progress(f"{judge.name} judging {model.name} / {cfg.name}")
                result["metrics"] = judging.rate_answers(judge, cfg, predictions)
            if contamination is not None and partition is None and cfg.judge is None:
                _add_contamination(result, cfg, predictions, limit, contamination)
            results.append(result)
            if partition is not None:
                path = partition_path(Path(output), partition, model.name, cfg.name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"result": result, "predictions": predictions}, ensure_ascii=False)
                                + "\n", encoding="utf-8")
            elif output is not None:
                _write(Path(output), model.name, cfg.name, result, predictions)
                _plot_needle(Path(output), model.name, cfg, predictions, limit)
    for entries in answers.values():
        (cfg, base_result, base_predictions), *others = entries
        base_result["metrics"] = {}  # the base's own column: compared against, not scored
        for _, result, predictions in others:
            if progress:
                progress(f"{judge.name} comparing {result['model']} with {base_result['model']} / {cfg.name}")
            result["metrics"] = judging.compare_answers(judge, cfg, predictions, base_predictions,
                                                        base_result["model"])
        if output is not None:
            for _, result, predictions in entries:
                _write(Path(output), result["model"], cfg.name, result, predictions)
    if partition is not None:
        return results
    results = with_groups(results, groups)
    if output is not None:
        write_summary(output, results, [m.name for m in models])
    return results


def _check_judging(models: list, datasets: list[DatasetConfig], judge, partition) -> None:
    judged = [cfg for cfg in datasets if cfg.judge is not None]
    if not judged:
        return
    names = ", ".join(cfg.name for cfg in judged)
    if judge is None:
        raise ValueError(f"dataset(s) {names} are judged by a model: give --judge-model PATH or --judge-url URL")
    if partition is not None:
        raise ValueError(f"dataset(s) {names} are judged by a model; run them in one process "
                         "(no --workers / --partition)")
    pairwise = [cfg.name for cfg in judged if cfg.judge.mode == "pairwise"]
    if pairwise and len(models) < 2:
        raise ValueError(f"dataset(s) {', '.join(pairwise)} compare models pairwise: give at least two models "
                         "(--model / --url; the first is the base the others are compared with)")


def check_partition(index: int, count: int) -> None:
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"partition {index} of {count}: need 0 <= index < count")


def partition_path(output: Path, partition: tuple[int, int], model: str, dataset: str) -> Path:
    w, n = partition
    return output / "partitions" / f"{w}-of-{n}" / safe_name(model) / f"{safe_name(dataset)}.json"


def merge(output: str | Path, models: list[str], datasets: list[DatasetConfig], count: int,
          num_fewshot: int | None = None, groups: dict[str, list[str]] | None = None,
          limit: int | None = None, contamination: set[int] | None = None) -> list[dict]:
    """The ``count`` partitions of every (model, dataset) under ``output`` merged into the predictions,
    results and summary one process would have written. A missing partition is named."""
    output = Path(output)
    results = []
    for model in models:
        for cfg in datasets:
            cfg = with_fewshot(cfg, num_fewshot)
            records, seconds, result = [], 0.0, None
            for w in range(count):
                path = partition_path(output, (w, count), model, cfg.name)
                if not path.is_file():
                    raise ValueError(f"partition {w} of {count} of {model} / {cfg.name} is missing ({path}); "
                                     f"run it (--partition {w}/{count}) before merging")
                part = json.loads(path.read_text(encoding="utf-8"))
                records += part["predictions"]
                seconds += part["result"]["seconds"]
                result = part["result"]
            records.sort(key=lambda r: (r["id"], r["rotation"]))
            result = {**result, "metrics": tasks.metrics_of(records, cfg),
                      "num_items": sum(r["rotation"] == 0 for r in records), "seconds": round(seconds, 3)}
            if contamination is not None:
                _add_contamination(result, cfg, records, limit, contamination)
            results.append(result)
            _write(output, model, cfg.name, result, records)
            _plot_needle(output, model, cfg, records, limit)
    results = with_groups(results, groups)
    write_summary(output, results, models)
    return results


def _add_contamination(result: dict, cfg: DatasetConfig, records: list[dict], limit: int | None,
                       corpus: set[int]) -> None:
    """``contaminated`` (% of items sharing a 13-gram with the corpus) and the metrics on the clean items."""
    from intern_jax.eval.contamination import contaminated  # noqa: PLC0415

    flags = contaminated(tasks.read_items(cfg.reader, cfg.multiple_choice)[:limit], corpus)
    clean = [r for r in records if not flags[r["id"]]]
    extra = {"contaminated": round(100.0 * sum(flags) / max(1, len(flags)), 2)}
    if clean:
        extra.update({f"clean_{k}": v for k, v in tasks.metrics_of(clean, cfg).items()})
    result["metrics"] = {**result["metrics"], **extra}
    result["clean_items"] = len(flags) - sum(flags)


def _plot_needle(output: Path, model: str, cfg: DatasetConfig, records: list[dict], limit: int | None) -> None:
    """Needle-in-a-haystack sets: accuracy over depth x length, ``OUT/plots/<model>/<dataset>_heatmap.png``."""
    if cfg.reader.generate != "needle" or not records:
        return
    from intern_jax.eval.needle import heatmap  # noqa: PLC0415

    items = tasks.read_items(cfg.reader, cfg.multiple_choice)[:limit]
    path = output / "plots" / safe_name(model) / f"{safe_name(cfg.name)}_heatmap.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    heatmap([r for r in records if r["rotation"] == 0], items, path, f"{model} / {cfg.name}")


def _write(output: Path, model: str, dataset: str, result: dict, predictions: list[dict]) -> None:
    pred_path = output / "predictions" / safe_name(model) / f"{safe_name(dataset)}.jsonl"
    result_path = output / "results" / safe_name(model) / f"{safe_name(dataset)}.json"
    for p in (pred_path, result_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    pred_path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions), encoding="utf-8")
    result_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
