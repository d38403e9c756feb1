"""Human-readable views of a run's ``stats.json``: a table on stdout and a funnel chart (PNG).

The chart uses matplotlib's Agg backend (no display needed). Nothing here changes data.
"""

from __future__ import annotations

import sys
from pathlib import Path


def format_table(stats: dict) -> str:
    rows = [("stage", "docs in", "docs out", "MB in", "MB out", "tokens", "s", "dropped (reason: n)")]
    for name, s in stats["stages"].items():
        drops = ", ".join(f"{k}: {v}" for k, v in sorted(s["drops"].items(), key=lambda kv: -kv[1]))
        if name == "quality" and "off_no_model_configured" in s.get("counts", {}):
            drops = "off: no model configured"
        rows.append((name, str(s["docs_in"]), str(s["docs_out"]), f"{s['bytes_in'] / 1e6:.2f}",
                     f"{s['bytes_out'] / 1e6:.2f}", str(s["tokens"] or ""), f"{s['seconds']:.1f}", drops or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + "  " + r[-1]
             for r in rows]
    if "manifest" in stats:
        lines.append("output: " + ", ".join(f"{k}: {v['documents']} docs / {v['tokens']} tokens"
                                            for k, v in stats["manifest"].items()))
    return "\n".join(lines)


def print_table(stats: dict, file=None) -> None:
    print(format_table(stats), file=file or sys.stdout)


def funnel_chart(stats: dict, path: str | Path) -> Path:
    """Horizontal bars of documents left after each stage, annotated with the top drop reasons."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(stats["stages"])
    kept = [stats["stages"][n]["docs_out"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.2))
    ax.barh(range(len(names)), kept, color="#4878a8")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("documents kept")
    ax.set_title("corpus processing funnel")
    for i, n in enumerate(names):
        top = sorted(stats["stages"][n]["drops"].items(), key=lambda kv: -kv[1])[:2]
        note = f"{kept[i]}" + (f"  (-{', '.join(f'{k} {v}' for k, v in top)})" if top else "")
        ax.text(kept[i], i, " " + note, va="center", fontsize=8)
    ax.set_xlim(0, max(kept + [1]) * 1.6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
