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
        if s.get("off"):
            drops = f"skipped (off: {s['off']})"
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


def funnel_rows(stats: dict) -> list[tuple[str, int, str, bool]]:
    """(stage, documents after it, annotation, skipped) per stage: what the funnel chart draws.
    A skipped stage passes every document through and is annotated with why it was off."""
    rows = []
    for name, s in stats["stages"].items():
        if s.get("off"):
            rows.append((name, s["docs_out"], f"{s['docs_out']}  skipped (off: {s['off']})", True))
            continue
        top = sorted(s["drops"].items(), key=lambda kv: -kv[1])[:2]
        note = f"{s['docs_out']}" + (f"  (-{', '.join(f'{k} {v}' for k, v in top)})" if top else "")
        rows.append((name, s["docs_out"], note, False))
    return rows


def funnel_chart(stats: dict, path: str | Path) -> Path:
    """Horizontal bars of documents left after each stage, annotated with the top drop reasons;
    a skipped stage is drawn hatched in grey at its pass-through count."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = funnel_rows(stats)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.2))
    for i, (_, kept, note, skipped) in enumerate(rows):
        ax.barh(i, kept, color="#d0d0d0" if skipped else "#4878a8", hatch="//" if skipped else None)
        ax.text(kept, i, " " + note, va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("documents kept")
    ax.set_title("corpus processing funnel")
    ax.set_xlim(0, max([r[1] for r in rows] + [1]) * 1.6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
