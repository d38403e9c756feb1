"""Contamination check: 13-gram overlap of benchmark items with a corpus (GPT-3's and Llama 2's recipe).

Text is lower-cased and split into words (``\\w+``); an item is contaminated when any 13-word window of its
text (its question, options and reference, as read) also occurs in a corpus document. The corpus is raw
JSONL (one ``{"text": ...}`` per line, e.g. a processed corpus written as JSONL) or plain text files; its
13-grams are kept as 64-bit hashes, so a corpus of N words costs about 8N bytes of memory.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

N = 13


def ngram_hashes(text: str, n: int = N) -> set[int]:
    words = re.findall(r"\w+", str(text).lower())
    return {int.from_bytes(hashlib.blake2b(" ".join(words[i:i + n]).encode("utf-8"), digest_size=8).digest(), "big")
            for i in range(len(words) - n + 1)}


def corpus_ngrams(paths, n: int = N) -> set[int]:
    """The n-gram hashes of every document in ``paths`` (JSONL with a ``text`` field, or plain text)."""
    out: set[int] = set()
    for path in [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]:
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise ValueError(f"--contamination {path}: no such file or directory")
        for file in files:
            with file.open(encoding="utf-8", errors="replace") as f:
                if file.suffix == ".jsonl":
                    for lineno, line in enumerate(f, start=1):
                        if line.strip():
                            try:
                                out |= ngram_hashes(json.loads(line).get("text", ""), n)
                            except (json.JSONDecodeError, AttributeError):
                                raise ValueError(f"{file}:{lineno}: not a JSON object with a 'text' field") from None
                else:
                    out |= ngram_hashes(f.read(), n)
    return out


def item_text(item: dict) -> str:
    """What of an item could have leaked: every string field, the options and the reference."""
    parts = [v for k, v in item.items() if isinstance(v, str) and k != "reference"]
    parts += [str(o) for o in item.get("options") or []]
    parts.append(str(item.get("reference", "")))
    return "\n".join(parts)


def contaminated(items: list[dict], corpus: set[int], n: int = N) -> list[bool]:
    return [bool(ngram_hashes(item_text(it), n) & corpus) for it in items]
