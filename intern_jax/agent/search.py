"""Document search: BM25 (``bm25s``) over passages of a JSONL file or of a processed corpus directory.

``DocumentSearch(source)`` reads the documents once, cuts each into passages of at most
``passage_words`` words (consecutive, not overlapping; the passage keeps the document's own text
between its first and last word), and indexes them. ``search(query, top_k)`` returns the best
passages as ``{"id", "passage", "score", "text"}`` (document id, passage number within it, score),
best first, only those sharing a term with the query. It is a toolkit: ``registry.add_toolkit(...)``
adds its ``search`` tool.

Scoring is Okapi BM25 with the non-negative idf ``ln(1 + (N - n + 0.5) / (n + 0.5))`` (bm25s's
``lucene`` method), ``k1`` = 1.5, ``b`` = 0.75; bm25s leaves out the factor ``k1 + 1`` that is the
same for every term, and it is put back here, so a score is the textbook
``sum idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``. Terms are case-folded words
(letters, digits, underscore), each Han character its own term; no stemming, no stop words.

Sources: a ``.jsonl`` file, one object per line with a ``text`` field (``id`` optional; the line
number otherwise); or the output directory of the data pipeline (``scripts/process_data.py``), whose
cleaned, deduplicated documents (``work/``) are read with their pipeline ids. Not here: dense
retrieval, incremental updates (build a new index), anything but plain text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from intern_jax.agent.tools import tool

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TERM = re.compile(rf"[{_HAN}]|[^\W{_HAN}]+")


def terms(text: str) -> list[str]:
    """The terms BM25 counts: case-folded runs of word characters, each Han character on its own."""
    return _TERM.findall(text.casefold())


def read_jsonl(path: Path, text_field: str = "text") -> list[tuple[str, str]]:
    """``(id, text)`` per line of a JSONL file; a bad line is a ValueError naming the file and line."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number} is not JSON ({e.msg}); each line must be an object with "
                                 f"a {text_field!r} field") from None
            if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                raise ValueError(f"{path}:{number} has no string field {text_field!r}; each line must be an "
                                 f"object like {{\"id\": \"doc1\", \"{text_field}\": \"...\"}}")
            docs.append((str(row.get("id", number)), row[text_field]))
    return docs


def read_documents(source, text_field: str = "text") -> list[tuple[str, str]]:
    """``(id, text)`` of every document of a JSONL file or a processed corpus directory."""
    path = Path(source)
    if path.is_dir():
        if not (path / "work" / "shards.json").is_file():
            raise ValueError(f"{path} is a directory but not a processed corpus (no work/shards.json); give a "
                             "JSONL file or the output directory of scripts/process_data.py")
        from intern_jax.data.processing import runner  # function level: numpy and the stage modules, only here

        return [(doc.id, doc.text) for doc in runner.kept_documents(path)]
    if not path.is_file():
        raise FileNotFoundError(f"document source {path} does not exist; give a JSONL file or a processed "
                                "corpus directory")
    return read_jsonl(path, text_field)


def passages(text: str, max_words: int) -> list[str]:
    """``text`` cut into consecutive pieces of at most ``max_words`` terms, each spanning its own text."""
    spans = [m.span() for m in _TERM.finditer(text)]
    return [text[spans[i][0]:spans[min(i + max_words, len(spans)) - 1][1]] for i in range(0, len(spans), max_words)]


class DocumentSearch:
    """A BM25 index over the passages of ``source`` (a JSONL file or processed corpus directory, or a list of
    ``(id, text)`` pairs); a toolkit whose tool is ``search``."""

    def __init__(self, source, *, passage_words: int = 200, k1: float = 1.5, b: float = 0.75,
                 text_field: str = "text", max_top_k: int = 20):
        import bm25s  # function level: bm25s pulls in scipy, only needed once an index is built

        if passage_words < 1:
            raise ValueError(f"passage_words must be at least 1, got {passage_words}")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        docs = list(source) if isinstance(source, list | tuple) else read_documents(source, text_field)
        self.k1, self.b, self.max_top_k = k1, b, max_top_k
        self.passages: list[tuple[str, int, str]] = [
            (doc_id, i, piece) for doc_id, text in docs for i, piece in enumerate(passages(text, passage_words))]
        if not self.passages:
            where = "the documents" if isinstance(source, list | tuple) else source
            raise ValueError(f"no text to index in {where}")
        self.index = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
        self.index.index([terms(p) for _, _, p in self.passages], show_progress=False)

    def __len__(self) -> int:
        return len(self.passages)

    def scores(self, query: str):
        """The Okapi BM25 score of every passage for ``query`` (``[len(self)]`` float64)."""
        return self.index.get_scores(terms(query)) * (self.k1 + 1)

    def top(self, query: str, top_k: int = 3) -> list[dict]:
        """The ``top_k`` best passages with a positive score, best first (ties: corpus order)."""
        import numpy as np  # function level, like bm25s

        if not 1 <= top_k <= self.max_top_k:
            raise ValueError(f"top_k must be between 1 and {self.max_top_k}, got {top_k}")
        if not terms(query):
            raise ValueError(f"the query {query!r} has no words to search for")
        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [{"id": self.passages[i][0], "passage": self.passages[i][1], "score": float(scores[i]),
                 "text": self.passages[i][2]} for i in order if scores[i] > 0]

    @tool(name="search")
    def search(self, query: str, top_k: int = 3) -> list[dict]:
        """Search the documents by keywords and return the best-matching passages with their ids and scores.

        Args:
            query: keywords to look for, e.g. "capital of France".
            top_k: how many passages to return (1 to 20).
        """
        hits = self.top(query, top_k)
        if not hits:
            return f"no passage contains any word of {query!r}"
        return [{**h, "score": round(h["score"], 4)} for h in hits]
