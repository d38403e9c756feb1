"""Fixtures for checkpoint tests: tiny configs with fresh random weights, and the embedded SmolLM2 model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from intern_jax.config import ModelConfig  # noqa: E402
from intern_jax.model import internlm2  # noqa: E402


def tiny_config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=300,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=96,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
    )
    base.update(kw)
    return ModelConfig(**base)


def random_params(cfg: ModelConfig, seed: int = 0):
    """Fresh weights with every leaf perturbed (norms around 1, biases around 0), none trivially 0 or 1."""
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(cfg.param_dtype)

    def leaf(spec):
        centre = 1.0 if spec.init == "ones" else 0.0
        scale = 0.05 if spec.init == "normal" else 0.1
        return jnp.asarray(centre + scale * rng.standard_normal(spec.shape), jnp.float32).astype(dtype)

    return jax.tree.map(leaf, internlm2.param_specs(cfg), is_leaf=lambda x: isinstance(x, internlm2.ParamSpec))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M GGUF, loaded once per session (f32)."""
    from intern_jax.checkpoint import embedded_model_path, load_model

    return load_model(embedded_model_path())


@pytest.fixture
def tiny():
    """Factory: ``tiny(**overrides) -> ModelConfig``."""
    return tiny_config


@pytest.fixture
def make_params():
    """Factory: ``make_params(cfg, seed=0) -> params``."""
    return random_params


@pytest.fixture
def trees_equal():
    return assert_trees_equal
