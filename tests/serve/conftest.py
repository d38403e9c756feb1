"""A tiny random model for engine tests (its own config: compiled functions are shared per module)."""

import pytest

from intern_jax import testing


@pytest.fixture(scope="session")
def tiny():
    cfg = testing.tiny_config(vocab_size=97, attention_bias=True, max_position_embeddings=128)
    return cfg, testing.random_params(cfg, 0, scale=0.3, norm_scale=0.3)
