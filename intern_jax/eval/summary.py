"""The summary: one table (dataset, version, metric, mode, one column per model), as OpenCompass prints it,
written as Markdown, CSV and JSON. It reads result dicts; it runs nothing."""

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


def write_summary(output: str | Path, results: list[dict], models: list[str]) -> str:
    """``summary.md``, ``summary.csv`` and ``summary.json`` in ``output``; returns the Markdown table."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(results, models)
    (output / "summary.md").write_text(markdown, encoding="utf-8")
    (output / "summary.csv").write_text(to_csv(results, models), encoding="utf-8")
    (output / "summary.json").write_text(json.dumps({"models": models, "results": results}, indent=2,
                                                    ensure_ascii=False) + "\n", encoding="utf-8")
    return markdown
