"""The unit every stage passes on (``Document``) and the counters every stage keeps (``StageStats``).

A stage is a function ``(docs, cfg, stats) -> docs`` over an iterable of documents; it counts
what came in, what went out and why anything was dropped. Nothing here reads or writes files.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass
class Document:
    id: str  # "<shard id>:<index>", unique and ordered within a run
    text: str
    path: str  # where it came from (file, with line or row for JSONL / Parquet)
    source: str = ""  # "en", "zh", "code", ...: the output group, set by language identification
    is_code: bool = False  # read from a source-code file
    meta: dict = field(default_factory=dict)


@dataclass
class StageStats:
    """Documents and bytes in/out of one stage, drops by reason and other named counts."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    tokens: int = 0
    seconds: float = 0.0
    drops: collections.Counter = field(default_factory=collections.Counter)
    counts: collections.Counter = field(default_factory=collections.Counter)  # e.g. emails replaced
    off: str = ""  # why the stage was skipped (documents pass through unchanged); empty: it ran
    failures: list = field(default_factory=list)  # {"path", "reason", "message"[, "page"]}: files not read

    def seen(self, doc: Document) -> None:
        self.docs_in += 1
        self.bytes_in += _nbytes(doc.text)

    def kept(self, doc: Document) -> None:
        self.docs_out += 1
        self.bytes_out += _nbytes(doc.text)

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] += n

    def merge(self, other: StageStats) -> None:
        for name in ("docs_in", "docs_out", "bytes_in", "bytes_out", "tokens", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.drops.update(other.drops)
        self.counts.update(other.counts)
        self.off = self.off or other.off
        self.failures.extend(other.failures)

    def to_dict(self) -> dict:
        return {
            "docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out, "tokens": self.tokens, "seconds": round(self.seconds, 3),
            "drops": dict(sorted(self.drops.items())), "counts": dict(sorted(self.counts.items())),
            **({"off": self.off} if self.off else {}),
            **({"failures": list(self.failures)} if self.failures else {}),
        }

    @classmethod
    def from_dict(cls, name: str, d: dict) -> StageStats:
        s = cls(name)
        for key in ("docs_in", "docs_out", "bytes_in", "bytes_out", "tokens", "seconds"):
            setattr(s, key, d.get(key, 0))
        s.drops.update(d.get("drops", {}))
        s.counts.update(d.get("counts", {}))
        s.off = d.get("off", "")
        s.failures = list(d.get("failures", []))
        return s


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def merge_stats(*groups: dict[str, StageStats]) -> dict[str, StageStats]:
    """Stage-wise sum of several ``{stage: StageStats}`` maps, keeping the first-seen stage order."""
    out: dict[str, StageStats] = {}
    for group in groups:
        for name, s in group.items():
            out.setdefault(name, StageStats(name)).merge(s)
    return out
