"""Text normalisation: encoding repair (ftfy), Unicode NFKC, control characters, whitespace.

Prose gets the full treatment; source code keeps its characters (no NFKC, no quote or width
folding, indentation kept) and only loses control characters and trailing spaces. Documents
that end up empty are dropped (reason ``empty``). No language or quality decisions here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator

import ftfy

from intern_jax.data.processing.config import NormaliseConfig
from intern_jax.data.processing.documents import Document, StageStats

# C0/C1 controls except tab and newline, plus zero-width and byte-order marks.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_MANY_NEWLINES = re.compile(r"\n{3,}")


def _ftfy_config(cfg: NormaliseConfig, code: bool) -> ftfy.TextFixerConfig:
    if code:
        return ftfy.TextFixerConfig(
            unescape_html=False, uncurl_quotes=False, fix_character_width=False, fix_latin_ligatures=False,
            normalization=None, explain=False, fix_encoding=cfg.fix_encoding, remove_control_chars=False,
        )
    return ftfy.TextFixerConfig(
        unescape_html=False, normalization="NFKC" if cfg.nfkc else None, explain=False,
        fix_encoding=cfg.fix_encoding, remove_control_chars=False,
    )


def normalise_text(text: str, cfg: NormaliseConfig, code: bool = False) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = ftfy.fix_text(text, _ftfy_config(cfg, code))
    if cfg.strip_control:
        text = _CONTROL.sub("", text)
    if cfg.collapse_whitespace:
        if not code:
            text = _SPACES.sub(" ", text)
            text = _MANY_NEWLINES.sub("\n\n", text)
        text = _TRAILING.sub("", text)
    return text.strip("\n") if code else text.strip()


def normalise(docs: Iterable[Document], cfg: NormaliseConfig, stats: StageStats) -> Iterator[Document]:
    for doc in docs:
        t0 = time.perf_counter()
        stats.seen(doc)
        text = normalise_text(doc.text, cfg, code=doc.is_code)
        if text != doc.text:
            stats.counts["changed"] += 1
        doc.text = text
        stats.seconds += time.perf_counter() - t0
        if not text.strip():
            stats.drop("empty")
            continue
        stats.kept(doc)
        yield doc
