"""Shared tiny model for the inference tests (one config, so compiled executables are reused)."""

import jax
import pytest

from intern_jax.config import ModelConfig
from intern_jax.model import internlm2


def tiny_config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=96, attention_bias=True, max_position_embeddings=128,
    )
    base.update(kw)
    return ModelConfig(**base)


def random_params(cfg, seed=0, scale=0.3):
    """Every leaf perturbed so logits are far from uniform and argmax ties are unlikely."""
    params = internlm2.init(cfg, jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, leaves)


@pytest.fixture(scope="session")
def tiny():
    cfg = tiny_config()
    return cfg, random_params(cfg)


@pytest.fixture(scope="session")
def tiny_tied():
    cfg = tiny_config(tie_word_embeddings=True)
    return cfg, random_params(cfg, seed=3)
