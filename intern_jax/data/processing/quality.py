"""Model-based quality: perplexity of each document under a model of this project.

Any checkpoint ``load_model`` accepts (the embedded SmolLM2 GGUF, a native checkpoint, a
pretraining run) scores each document's first ``max_tokens`` tokens, in batches of documents
of similar length padded to a power of two, so a CPU can score a small corpus. Per source,
the ``keep_fraction`` with the lowest perplexity is kept (code and prose have different
scales, so they are ranked apart). It does not train or fine-tune a quality classifier.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from intern_jax.data.processing.config import QualityConfig
from intern_jax.data.processing.documents import Document, StageStats
from intern_jax.model import internlm2

MIN_BUCKET = 16  # shortest padded length; longer batches pad to the next power of two


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


def padded_length(n: int, max_tokens: int) -> int:
    """Power of two >= n (at least MIN_BUCKET), capped at max_tokens: few shapes to compile."""
    return min(max_tokens, max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()))


@functools.partial(jax.jit, static_argnames="cfg")
def token_nll(params, tokens, segment_ids, cfg):
    """Summed next-token negative log-likelihood and predicted-token count per row.

    tokens, segment_ids: [B, T] int32 (segment 0 = padding) -> ([B] float32, [B] float32)."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    logits, _ = internlm2.forward(params, {"tokens": tokens, "positions": positions, "segment_ids": segment_ids}, cfg)
    logits = logits[:, :-1].astype(jnp.float32)  # [B, T-1, V]: predicts tokens[:, 1:]
    target = jnp.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target
    mask = segment_ids[:, 1:] > 0
    return jnp.where(mask, nll, 0.0).sum(-1), mask.sum(-1).astype(jnp.float32)


def perplexities(texts: list[str], model, cfg: QualityConfig, progress: bool = False) -> list[float]:
    """exp(mean next-token NLL) over each text's first ``cfg.max_tokens`` tokens, in input order;
    ``inf`` for a text too short to predict anything. ``model`` is a ``LoadedModel``."""
    tok, mcfg = model.tokenizer, model.config
    ids = [prefix_ids(tok, t, cfg.max_tokens) for t in tqdm(texts, desc="perplexity: encode", unit="doc",
                                                              disable=not progress, leave=False)]
    too_big = max((max(x) for x in ids if x), default=-1)
    if too_big >= mcfg.vocab_size:
        raise ValueError(
            f"the quality model's tokenizer produced id {too_big}, but the model has only {mcfg.vocab_size} "
            "embeddings; give a checkpoint whose tokenizer matches its model"
        )
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
    out = [math.inf] * len(texts)
    bar = tqdm(total=len(texts), desc="perplexity", unit="doc", disable=not progress)
    for start in range(0, len(order), cfg.batch_size):
        rows = order[start : start + cfg.batch_size]
        t = padded_length(max(len(ids[i]) for i in rows), cfg.max_tokens)
        tokens = np.zeros((cfg.batch_size, t), np.int32)  # a full batch every time: one shape per length
        segments = np.zeros((cfg.batch_size, t), np.int32)
        for r, i in enumerate(rows):
            tokens[r, : len(ids[i])], segments[r, : len(ids[i])] = ids[i], 1
        total, count = jax.device_get(token_nll(model.params, tokens, segments, mcfg))
        for r, i in enumerate(rows):
            out[i] = math.exp(total[r] / count[r]) if count[r] > 0 else math.inf
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


def load_quality_model(path: str, progress: bool = False):
    """``load_model(path)`` with a clear error when it is missing or carries no tokenizer."""
    from intern_jax.checkpoint import load_model  # noqa: PLC0415

    try:
        model = load_model(path, progress=progress)
    except FileNotFoundError as e:
        raise ValueError(f"quality.model={path!r} cannot be loaded ({e}); give a path load_model accepts "
                         "(a GGUF file, an HF or native checkpoint, a pretraining run) or '' to turn the step off"
                         ) from e
    if model.tokenizer is None:
        raise ValueError(f"quality model {path} carries no tokenizer; give a checkpoint with one")
    return model


def perplexity_filter(docs: Iterable[Document], cfg: QualityConfig, stats: StageStats,
                      progress: bool = False, model=None) -> dict[str, str]:
    """{dropped id: "high_perplexity"}: per source, all but the lowest-perplexity ``keep_fraction``.
    Sets ``doc.meta["perplexity"]``; ``model`` (a ``LoadedModel``) defaults to ``cfg.model`` loaded."""
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
