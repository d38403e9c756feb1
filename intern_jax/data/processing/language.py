"""Language identification (py3langid, its model ships in the package) and routing to sources.

Files read as source code go to ``code`` by extension; other text that looks like code (a
line-shape heuristic) goes there too; the rest is classified with langid and kept when its
language is allowed and its probability reaches the threshold. The source name is the
output group (``DIR/en``, ``DIR/zh``, ``DIR/code``). Mixed-language splitting is not done.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator

from intern_jax.data.processing.config import LanguageConfig
from intern_jax.data.processing.documents import Document, StageStats

_IDENTIFIER = None
_CODE_LINE = re.compile(
    r"""^\s*(
        (def|class|import|from|return|if|elif|else|for|while|try|except|with|raise|yield|
         \#include|\#define|public|private|static|void|int|const|let|var|function|fn|func|package)\b
      | [@}{)\]]
      | .*[;{}:,(]\s*$
      | .*\s(=|==|!=|\+=|->|=>)\s
      | (\#|//|/\*|\*)
    )""",
    re.VERBOSE,
)


def identifier():
    """The process-wide py3langid identifier, probabilities normalised to [0, 1]."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier  # noqa: PLC0415

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def classify(text: str, sample_chars: int = 2000) -> tuple[str, float]:
    """(langid code, probability) of the first ``sample_chars`` characters."""
    return identifier().classify(text[:sample_chars])


def looks_like_code(text: str, min_lines: int = 5, min_fraction: float = 0.6) -> bool:
    """Most non-blank lines have the shape of program text (keywords, brackets, operators)."""
    lines = [ln for ln in text.split("\n")[:400] if ln.strip()]
    if len(lines) < min_lines:
        return False
    indented = sum(ln.startswith(("    ", "\t")) for ln in lines) / len(lines)
    code = sum(bool(_CODE_LINE.match(ln)) for ln in lines) / len(lines)
    return code >= min_fraction or (code >= 0.4 and indented >= 0.3)


def identify_language(docs: Iterable[Document], cfg: LanguageConfig, stats: StageStats) -> Iterator[Document]:
    allowed = set(cfg.allowed)
    for doc in docs:
        t0 = time.perf_counter()
        stats.seen(doc)
        source = None
        if doc.is_code or (cfg.detect_code and looks_like_code(doc.text)):
            if not doc.is_code:
                stats.counts["routed_as_code"] += 1
            source = "code" if cfg.keep_code else None
            reason = "code_not_kept"
        else:
            lang, prob = classify(doc.text, cfg.sample_chars)
            doc.meta["lang"], doc.meta["lang_prob"] = lang, round(prob, 4)
            if lang not in allowed:
                reason = f"language_{lang}"
            elif prob < cfg.threshold:
                reason = "low_language_confidence"
            else:
                source = lang
        stats.seconds += time.perf_counter() - t0
        if source is None:
            stats.drop(reason)
            continue
        doc.source = source
        stats.kept(doc)
        yield doc
