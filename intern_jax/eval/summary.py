"""The summary: one table (dataset, version, metric, mode, one column per model), as OpenCompass prints it,
written as Markdown, CSV and JSON, with summary groups (a row averaging the first metric of named datasets)
and a bar chart (``summary.png``). It reads result dicts; it runs nothing."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

HEADER = ("dataset", "version", "metric", "mode")


def summary_rows(results: list[dict], models: list[str]) -> list[list[str]]:
    """``results``: ``{"model", "dataset", "version", "mode", "metrics": {name: value}}`` each. One row per
    (dataset, version, metric, mode) in first-seen order; ``-`` where a model has no number."""
    table: dict[tuple, dict[str, float]] = {}
    for r in results:
        for metric, value in r["metrics"].items():
            table.setdefault((r["dataset"], r["version"], metric, r["mode"]), {})[r["model"]] = value
    return [[*key, *(f"{row[m]:.2f}" if m in row else "-" for m in models)] for key, row in table.items()]


def to_markdown(results: list[dict], models: list[str]) -> str:
    header = [*HEADER, *models]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(results, models)]
    return "\n".join(lines) + "\n"


def to_csv(results: list[dict], models: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*HEADER, *models])
    writer.writerows(summary_rows(results, models))
    return out.getvalue()


def with_groups(results: list[dict], groups: dict[str, list[str]] | None) -> list[dict]:
    """``results`` plus, per group and model, ``{"dataset": group, "version": "-", "mode": "average", "metrics":
    {"naive_average": mean}}``: the mean of each member dataset's first metric (as OpenCompass's summary
    groups). A group is left out for a model that lacks any of its datasets; an unknown dataset is named."""
    out = list(results)
    known = {r["dataset"] for r in results}
    for group, members in (groups or {}).items():
        missing = [m for m in members if m not in known]
        if missing:
            raise ValueError(f"summary group {group!r} names datasets that were not evaluated: {', '.join(missing)} "
                             f"(evaluated: {', '.join(sorted(known))})")
        models = dict.fromkeys(r["model"] for r in results)
        for model in models:
            firsts = {r["dataset"]: next(iter(r["metrics"].values())) for r in results
                      if r["model"] == model and r["metrics"]}
            if all(m in firsts for m in members):
                out.append({"model": model, "dataset": group, "version": "-", "mode": "average",
                            "metrics": {"naive_average": round(sum(firsts[m] for m in members) / len(members), 2)}})
    return out


def plot_summary(results: list[dict], models: list[str], path: str | Path) -> None:
    """A bar chart of each dataset's first metric (groups included), one bar per model."""
    import matplotlib  # noqa: PLC0415  (plots only)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    labels, values = [], {m: [] for m in models}
    for r in results:
        if not r["metrics"]:
            continue
        metric = next(iter(r["metrics"]))
        label = f"{r['dataset']}\n{metric}"
        if label not in labels:
            labels.append(label)
            for m in models:
                values[m].append(float("nan"))
        if r["model"] in values:
            values[r["model"]][labels.index(label)] = r["metrics"][metric]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) * max(1, len(models)) ** 0.5 + 1.5), 3.5))
    width = 0.8 / max(1, len(models))
    for k, m in enumerate(models):
        ax.bar([i + (k - (len(models) - 1) / 2) * width for i in range(len(labels))], values[m], width, label=m)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("score")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_summary(output: str | Path, results: list[dict], models: list[str], plot: bool = True) -> str:
    """``summary.md``, ``summary.csv``, ``summary.json`` and (``plot``) ``summary.png`` in ``output``; returns
    the Markdown table."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if plot:
        plot_summary(results, models, output / "summary.png")
    markdown = to_markdown(results, models)
    (output / "summary.md").write_text(markdown, encoding="utf-8")
    (output / "summary.csv").write_text(to_csv(results, models), encoding="utf-8")
    (output / "summary.json").write_text(json.dumps({"models": models, "results": results}, indent=2,
                                                    ensure_ascii=False) + "\n", encoding="utf-8")
    return markdown
