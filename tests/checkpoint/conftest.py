"""Fixtures for checkpoint tests: tiny configs with fresh random weights, and the embedded SmolLM2 model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from intern_jax.testing import random_params, tiny_config  # noqa: E402


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


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
