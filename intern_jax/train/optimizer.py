"""The optimizer of a run: InternEvo's AdamW, warmup + cosine (or linear, constant, WSD) schedule,
clipping, decay mask.

``make_optimizer`` returns an optax ``GradientTransformation`` over whatever tree is
trainable (full model params, or adapters); ``learning_rate_schedule`` is the same schedule
as a function of the update count. Skipping non-finite updates is the train step's job.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from intern_jax.train.config import OptimizerConfig

NO_DECAY_MARKERS = ("norm", "bias")


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then ``cfg.schedule``
    (cosine, linear, constant or warmup-stable-decay) down to ``learning_rate * min_lr_ratio``
    at ``decay_steps`` (default ``total_steps``), flat after."""
    decay_steps = cfg.decay_steps or total_steps
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    warmup = min(cfg.warmup_steps, decay_steps)
    span = max(decay_steps - warmup, 1)
    # wsd: the decay takes the last wsd_decay_fraction of the post-warmup steps
    stable = span - max(round(cfg.wsd_decay_fraction * span), 1) if cfg.schedule == "wsd" else 0

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = peak * count / max(warmup, 1)
        progress = jnp.clip((count - warmup) / span, 0.0, 1.0)
        if cfg.schedule == "cosine":
            after = floor + 0.5 * (peak - floor) * (1.0 + jnp.cos(jnp.pi * progress))
        elif cfg.schedule == "linear":
            after = peak + (floor - peak) * progress
        elif cfg.schedule == "constant":
            after = jnp.full_like(count, peak)
        else:
            decay = jnp.clip((count - warmup - stable) / max(span - stable, 1), 0.0, 1.0)
            after = peak + (floor - peak) * decay
        return jnp.where(count < warmup, warm, after)

    return schedule


def decay_mask(params):
    """True for leaves that get weight decay: everything except norm scales and biases."""

    def keep(path, _):
        name = jax.tree_util.keystr(path).lower()
        return not any(marker in name for marker in NO_DECAY_MARKERS)

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """Clip by global norm (if ``grad_clip`` > 0), then AdamW with the schedule and decay mask."""
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(cfg, total_steps),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw
