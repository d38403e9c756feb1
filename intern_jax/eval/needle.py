"""Needle in a haystack (OpenCompass NeedleBench's single-needle retrieval), generated locally from a seed.

Each item hides one sentence, ``The secret code of <name> is <7 digits>.``, at a relative ``depth`` (0 =
the start, 1 = the end) of a haystack of about ``length`` words of generated filler prose, then asks for
that code. Every (length, depth) pair gets ``per_cell`` items; the same seed gives the same items. The
answer is scored by exact match of the first 7-digit number in the reply (a ``regex`` post-processor in
the config). ``heatmap`` draws accuracy over depth x length. Lengths are in words: the model's tokens
are about 1.3 per word for English BPE vocabularies.
"""

from __future__ import annotations

import numpy as np

NAMES = ("Avalon", "Brightwater", "Cobalt Ridge", "Dunmore", "Elmstead", "Fairhaven", "Glenrock", "Harrowgate",
         "Ironwood", "Juniper Falls", "Kestrel Bay", "Larkspur", "Marlow", "Northcliff", "Oakhurst", "Pinecrest")
SUBJECTS = ("The river", "A quiet village", "The old library", "Every autumn the market", "The northern road",
            "A small harbour", "The clock tower", "The orchard", "Our neighbour", "The mountain path")
VERBS = ("winds past", "looks over", "was built beside", "stays open near", "leads toward", "faces",
         "grew around", "is remembered for", "sits below", "was painted near")
OBJECTS = ("the green fields", "a row of stone houses", "the busy square", "the long bridge", "the western hills",
           "a field of sunflowers", "the fishing boats", "the railway station", "an empty chapel", "the lake")
TAILS = ("in the morning light.", "as it has for a century.", "without much notice.", "on most summer days.",
         "when the weather turns.", "like many places here.", "long after dark.", "for anyone who asks.")


def filler(rng: np.random.Generator, words: int) -> list[str]:
    """Sentences of plain prose, about ``words`` words in all."""
    out, count = [], 0
    while count < words:
        sentence = " ".join([SUBJECTS[rng.integers(len(SUBJECTS))], VERBS[rng.integers(len(VERBS))],
                             OBJECTS[rng.integers(len(OBJECTS))], TAILS[rng.integers(len(TAILS))]])
        out.append(sentence)
        count += len(sentence.split())
    return out


def needle_rows(lengths=(200, 400, 800), depths=(0.0, 0.25, 0.5, 0.75, 1.0), per_cell: int = 2,
                seed: int = 0) -> list[dict]:
    """Items ``{"context", "question", "answer", "length", "depth"}``, one per (length, depth, repeat)."""
    lengths, depths = [int(x) for x in lengths], [float(x) for x in depths]
    if not lengths or min(lengths) < 10:
        raise ValueError(f"needle lengths must be >= 10 words, got {lengths}")
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"needle depths must lie in [0, 1], got {depths}")
    if per_cell < 1:
        raise ValueError(f"needle per_cell must be >= 1, got {per_cell}")
    rng = np.random.default_rng(seed)
    rows = []
    for length in lengths:
        for depth in depths:
            for _ in range(per_cell):
                name = NAMES[rng.integers(len(NAMES))]
                code = str(int(rng.integers(1_000_000, 10_000_000)))
                sentences = filler(rng, length)
                at = round(depth * len(sentences))
                sentences.insert(at, f"The secret code of {name} is {code}.")
                rows.append({"context": " ".join(sentences), "question": f"What is the secret code of {name}?",
                             "answer": code, "length": length, "depth": depth})
    return rows


def heatmap(records: list[dict], items: list[dict], path, title: str = "") -> None:
    """Accuracy (%) over depth (rows) x length (columns) as a PNG; ``records[i]["id"]`` indexes ``items``."""
    import matplotlib  # noqa: PLC0415  (plots only)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    lengths = sorted({it["length"] for it in items})
    depths = sorted({it["depth"] for it in items})
    right = np.zeros((len(depths), len(lengths)))
    total = np.zeros_like(right)
    for r in records:
        item = items[r["id"]]
        cell = depths.index(item["depth"]), lengths.index(item["length"])
        total[cell] += 1
        right[cell] += bool(r["correct"])
    accuracy = np.where(total > 0, 100.0 * right / np.maximum(total, 1), np.nan)
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2, 0.6 * len(depths) + 1.5))
    image = ax.imshow(accuracy, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(x) for x in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("haystack length (words)")
    ax.set_ylabel("needle depth")
    for (i, j), value in np.ndenumerate(accuracy):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title(title or "needle in a haystack")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
