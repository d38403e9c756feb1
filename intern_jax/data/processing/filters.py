"""Rule-based quality filters in the spirit of Gopher (MassiveText) and C4, one reason per drop.

``words`` splits prose so the word-based rules also make sense for Chinese: every Han
character is a word, runs of other non-space characters are words. Mean word length is not
applied to Chinese. Code gets only size and line-shape rules (long minified lines, data
blobs), never the word block-list, which is meant for web prose. Each signal is a small pure
function so it can be checked by hand.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Iterable, Iterator

from intern_jax.data.processing.config import FilterConfig
from intern_jax.data.processing.documents import Document, StageStats

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(f"[{_HAN}]|[^\\s{_HAN}]+")


def words(text: str) -> list[str]:
    """Whitespace-separated tokens, with each Han character a word of its own."""
    return _WORD.findall(text)


def mean_word_length(ws: list[str]) -> float:
    return sum(map(len, ws)) / max(len(ws), 1)


def symbol_to_word_ratio(text: str, ws: list[str]) -> float:
    """('#' + '...' + '…') per word (Gopher)."""
    return (text.count("#") + text.count("...") + text.count("\u2026")) / max(len(ws), 1)


def char_fractions(text: str) -> tuple[float, float]:
    """(digits, neither letter nor digit) as fractions of the non-space characters."""
    chars = [c for c in text if not c.isspace()]
    n = max(len(chars), 1)
    return sum(c.isdigit() for c in chars) / n, sum(not c.isalnum() for c in chars) / n


def alpha_word_fraction(ws: list[str]) -> float:
    return sum(any(c.isalpha() for c in w) for w in ws) / max(len(ws), 1)


def duplicate_line_fractions(text: str) -> tuple[float, float]:
    """(lines that repeat an earlier line, their characters) as fractions of non-blank lines / chars."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    seen, dup_lines, dup_chars = set(), 0, 0
    for ln in lines:
        if ln in seen:
            dup_lines += 1
            dup_chars += len(ln)
        seen.add(ln)
    return dup_lines / max(len(lines), 1), dup_chars / max(sum(map(len, lines)), 1)


def top_ngram_char_fraction(ws: list[str], n: int) -> float:
    """Characters in the most frequent word n-gram (counted at every occurrence) over all word
    characters; 0 when no n-gram occurs twice (Gopher)."""
    grams = collections.Counter(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(map(len, gram)) / max(sum(map(len, ws)), 1)


def duplicate_ngram_char_fraction(ws: list[str], n: int) -> float:
    """Characters of words covered by some word n-gram occurring more than once, over all word
    characters (Gopher's duplicate n-gram fraction; overlapping occurrences counted once)."""
    grams = collections.Counter(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))
    covered = [False] * len(ws)
    for i in range(len(ws) - n + 1):
        if grams[tuple(ws[i : i + n])] > 1:
            covered[i : i + n] = [True] * n
    return sum(len(w) for w, c in zip(ws, covered) if c) / max(sum(map(len, ws)), 1)


def blocklisted(text: str, blocklist: tuple[str, ...]) -> str | None:
    """The first block-list entry found, case-insensitively: ASCII entries as whole words (not
    inside identifiers such as ``porn_filter``; spaces match any whitespace), others as substrings."""
    lowered = text.lower()
    for entry in blocklist:
        e = entry.lower()
        if e.isascii():
            pattern = r"\s+".join(map(re.escape, e.split()))
            if re.search(rf"(?<![a-z0-9_]){pattern}(?![a-z0-9_])", lowered):
                return entry
        elif e in lowered:
            return entry
    return None


def prose_drop_reason(text: str, source: str, cfg: FilterConfig) -> str | None:
    """Why a prose document fails the rules, or None if it passes. Checks run cheapest first."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    ws = words(text)
    if len(ws) < cfg.min_words:
        return "too_few_words"
    if len(ws) > cfg.max_words:
        return "too_many_words"
    if source != "zh" and not cfg.min_mean_word_length <= mean_word_length(ws) <= cfg.max_mean_word_length:
        return "mean_word_length"
    if symbol_to_word_ratio(text, ws) > cfg.max_symbol_to_word_ratio:
        return "symbol_to_word_ratio"
    digits, non_alnum = char_fractions(text)
    if digits > cfg.max_digit_fraction:
        return "digit_fraction"
    if non_alnum > cfg.max_non_alnum_fraction:
        return "symbol_fraction"
    if alpha_word_fraction(ws) < cfg.min_alpha_word_fraction:
        return "alpha_word_fraction"
    dup_lines, dup_line_chars = duplicate_line_fractions(text)
    if dup_lines > cfg.max_duplicate_line_fraction or dup_line_chars > cfg.max_duplicate_line_char_fraction:
        return "duplicate_lines"
    for n, limit in enumerate(cfg.top_ngram_max_fraction, start=2):
        if top_ngram_char_fraction(ws, n) > limit:
            return "top_ngram_repetition"
    for n, limit in enumerate(cfg.duplicate_ngram_max_fraction, start=5):
        if duplicate_ngram_char_fraction(ws, n) > limit:
            return "duplicate_ngram_repetition"
    if blocklisted(text, cfg.blocklist):
        return "blocklist"
    return None


def code_drop_reason(text: str, cfg: FilterConfig) -> str | None:
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if max(map(len, text.split("\n"))) > cfg.code_max_line_length:
        return "code_long_line"
    non_space = [c for c in text if not c.isspace()]
    if sum(c.isalpha() for c in non_space) / max(len(non_space), 1) < cfg.code_min_alpha_fraction:
        return "code_low_alpha"
    return None


def quality_filter(docs: Iterable[Document], cfg: FilterConfig, stats: StageStats) -> Iterator[Document]:
    if not cfg.enabled:
        stats.off = "filters.enabled=False"
    for doc in docs:
        t0 = time.perf_counter()
        stats.seen(doc)
        reason = None
        if cfg.enabled:
            reason = code_drop_reason(doc.text, cfg) if doc.source == "code" else prose_drop_reason(
                doc.text, doc.source, cfg
            )
        stats.seconds += time.perf_counter() - t0
        if reason:
            stats.drop(reason)
            continue
        stats.kept(doc)
        yield doc
