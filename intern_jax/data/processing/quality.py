"""Model-based quality: perplexity of each document under a model of this project.

Any checkpoint ``load_model`` accepts (the embedded SmolLM2 GGUF, a pretraining run) scores
each document's first ``max_tokens`` tokens; per source, the ``keep_fraction`` with the lowest
perplexity is kept (code and prose have different scales, so they are ranked apart). This is
the only stage that imports jax; it does not train or fine-tune a classifier.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import numpy as np
from tqdm.auto import tqdm

from intern_jax.data.processing.config import QualityConfig
from intern_jax.data.processing.documents import Document, StageStats


def perplexities(texts: list[str], model, cfg: QualityConfig, progress: bool = False) -> list[float]:
    """exp(mean next-token NLL) of each text's first ``cfg.max_tokens`` tokens (BOS added when the
    tokenizer has one); ``inf`` for a text too short to predict anything."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from intern_jax.model import internlm2  # noqa: PLC0415

    tok, mcfg = model.tokenizer, model.config
    t = cfg.max_tokens

    @jax.jit
    def nll(params, tokens, segments):  # tokens, segments: [B, T]
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), tokens.shape)
        logits, _ = internlm2.forward(params, {"tokens": tokens, "positions": positions, "segment_ids": segments}, mcfg)
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        target_logp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        mask = (segments[:, 1:] > 0).astype(jnp.float32)
        return -(target_logp * mask).sum(-1), mask.sum(-1)

    out = []
    for start in tqdm(range(0, len(texts), cfg.batch_size), desc="perplexity", disable=not progress):
        batch = texts[start : start + cfg.batch_size]
        tokens = np.zeros((cfg.batch_size, t), np.int32)
        segments = np.zeros((cfg.batch_size, t), np.int32)
        for i, text in enumerate(batch):
            ids = tok.encode(text, add_bos=True)[:t]
            tokens[i, : len(ids)], segments[i, : len(ids)] = ids, 1
        total, count = jax.device_get(nll(model.params, tokens, segments))
        out.extend(math.exp(s / c) if c > 0 else math.inf for s, c in zip(total[: len(batch)], count[: len(batch)]))
    return out


def perplexity_filter(docs: Iterable[Document], cfg: QualityConfig, stats: StageStats,
                      progress: bool = False) -> dict[str, str]:
    """{dropped id: "high_perplexity"}: per source, all but the lowest-perplexity ``keep_fraction``."""
    from intern_jax.checkpoint import load_model  # noqa: PLC0415

    docs = list(docs)
    t0 = time.perf_counter()
    model = load_model(cfg.model)
    if model.tokenizer is None:
        raise ValueError(f"quality model {cfg.model} carries no tokenizer; give a checkpoint with one")
    for d in docs:
        stats.seen(d)
    scores = perplexities([d.text for d in docs], model, cfg, progress)
    dropped = {}
    for source in sorted({d.source for d in docs}):
        idx = [i for i, d in enumerate(docs) if d.source == source]
        keep = max(1, math.ceil(cfg.keep_fraction * len(idx)))
        order = sorted(idx, key=lambda i: (scores[i], i))
        for i in order[keep:]:
            dropped[docs[i].id] = "high_perplexity"
            stats.drop("high_perplexity")
    for i, d in enumerate(docs):
        d.meta["perplexity"] = scores[i]
        if d.id not in dropped:
            stats.kept(d)
    stats.seconds += time.perf_counter() - t0
    return dropped
