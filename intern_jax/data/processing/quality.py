"""Model-based quality: perplexity of each document under a model of this project.

Any checkpoint ``load_model`` accepts (the embedded SmolLM2 GGUF, a native checkpoint, a
pretraining run) scores each document's first ``max_tokens`` tokens with the project's one scorer,
``Decoder.score`` (documents of similar length share a batch padded to a power of two), so a CPU
can score a small corpus. Per source,
the ``keep_fraction`` with the lowest perplexity is kept (code and prose have different
scales, so they are ranked apart). It does not train or fine-tune a quality classifier.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import numpy as np
from tqdm.auto import tqdm

from intern_jax.checkpoint import load_model
from intern_jax.data.processing.config import QualityConfig
from intern_jax.data.processing.documents import Document, StageStats
from intern_jax.inference import Decoder


def prefix_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    """The first ``max_tokens`` ids of ``text`` (BOS first when the tokenizer has one).

    Only a prefix of a long text is encoded, grown until it yields a few tokens more than
    needed, so a huge document costs no more than a short one."""
    chars = 8 * max_tokens
    while True:
        ids = tokenizer.encode(text[:chars], add_bos=True)
        if chars >= len(text) or len(ids) >= max_tokens + 8:
            return ids[:max_tokens]
        chars *= 2


def perplexities(texts: list[str], model, cfg: QualityConfig, progress: bool = False) -> list[float]:
    """exp(mean next-token NLL) over each text's first ``cfg.max_tokens`` tokens, in input order;
    ``inf`` for a text too short to predict anything. ``model`` is a ``Decoder`` (its compiled
    programs serve every call) or a ``LoadedModel`` (a decoder is made for this call)."""
    tok, mcfg = model.tokenizer, model.config
    ids = [prefix_ids(tok, t, cfg.max_tokens) for t in tqdm(texts, desc="perplexity: encode", unit="doc",
                                                              disable=not progress, leave=False)]
    too_big = max((max(x) for x in ids if x), default=-1)
    if too_big >= mcfg.vocab_size:
        raise ValueError(
            f"the quality model's tokenizer produced id {too_big}, but the model has only {mcfg.vocab_size} "
            "embeddings; give a checkpoint whose tokenizer matches its model"
        )
    decoder = Decoder.from_model(model)
    out = [math.inf] * len(texts)
    bar = tqdm(total=len(texts), desc="perplexity", unit="doc", disable=not progress)
    scorable = sorted((i for i in range(len(ids)) if len(ids[i]) >= 2), key=lambda i: len(ids[i]))
    bar.update(len(texts) - len(scorable))  # nothing to predict: inf
    for start in range(0, len(scorable), cfg.batch_size):  # similar lengths share a batch
        rows = scorable[start : start + cfg.batch_size]
        scored = decoder.score([ids[i] for i in rows], [1] * len(rows))  # log p of every token after the first
        for i, (logprobs, _) in zip(rows, scored, strict=True):
            out[i] = math.exp(-float(np.mean(logprobs, dtype=np.float64)))
        bar.update(len(rows))
    bar.close()
    return out


def keep_lowest(scores: list[float], sources: list[str], keep_fraction: float) -> list[bool]:
    """Per source, True for the ceil(keep_fraction * n) lowest scores (ties: earlier first)."""
    keep = [False] * len(scores)
    for source in set(sources):
        idx = [i for i, s in enumerate(sources) if s == source]
        for i in sorted(idx, key=lambda i: (scores[i], i))[: max(1, math.ceil(keep_fraction * len(idx)))]:
            keep[i] = True
    return keep


def load_quality_model(path: str, progress: bool = False) -> Decoder:
    """A ``Decoder`` over ``load_model(path)``, with a clear error when it is missing or carries no tokenizer."""
    try:
        model = load_model(path, progress=progress)
    except FileNotFoundError as e:
        raise ValueError(f"quality.model={path!r} cannot be loaded ({e}); give a path load_model accepts "
                         "(a GGUF file, an HF or native checkpoint, a pretraining run) or '' to turn the step off"
                         ) from e
    if model.tokenizer is None:
        raise ValueError(f"quality model {path} carries no tokenizer; give a checkpoint with one")
    return Decoder.from_model(model)


def perplexity_filter(docs: Iterable[Document], cfg: QualityConfig, stats: StageStats,
                      progress: bool = False, model=None) -> dict[str, str]:
    """{dropped id: "high_perplexity"}: per source, all but the lowest-perplexity ``keep_fraction``.
    Sets ``doc.meta["perplexity"]``; ``model`` (a ``Decoder`` or ``LoadedModel``) defaults to ``cfg.model`` loaded."""
    docs = list(docs)
    t0 = time.perf_counter()
    model = model or load_quality_model(cfg.model, progress)
    for d in docs:
        stats.seen(d)
    scores = perplexities([d.text for d in docs], model, cfg, progress)
    keep = keep_lowest(scores, [d.source for d in docs], cfg.keep_fraction)
    dropped = {}
    for d, score, k in zip(docs, scores, keep):
        d.meta["perplexity"] = score
        if k:
            stats.kept(d)
        else:
            dropped[d.id] = "high_perplexity"
            stats.drop("high_perplexity")
    stats.seconds += time.perf_counter() - t0
    return dropped
