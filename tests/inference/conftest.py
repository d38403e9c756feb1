"""Shared tiny model for the inference tests (one config, so compiled executables are reused)."""

import pytest

from intern_jax import testing
from intern_jax.config import ModelConfig


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=97, attention_bias=True, max_position_embeddings=128)
    return testing.tiny_config(**{**base, **kw})


def random_params(cfg, seed=0, scale=0.3):
    """Every leaf perturbed so logits are far from uniform and argmax ties are unlikely."""
    return testing.random_params(cfg, seed, scale=scale, norm_scale=scale)


@pytest.fixture(scope="session")
def tiny():
    cfg = tiny_config()
    return cfg, random_params(cfg)


@pytest.fixture(scope="session")
def tiny_tied():
    cfg = tiny_config(tie_word_embeddings=True)
    return cfg, random_params(cfg, seed=3)
