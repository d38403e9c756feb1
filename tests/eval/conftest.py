"""A tiny random model for the evaluation tests, and fake models that answer requests from a table."""

import pytest

from intern_jax import testing


@pytest.fixture(scope="session")
def tiny_eval():
    """(config, params, Decoder) of a tiny random model: logits far from uniform (scale 0.3)."""
    from intern_jax.inference import Decoder

    cfg = testing.tiny_config(vocab_size=97, max_position_embeddings=64)
    params = testing.random_params(cfg, seed=7, scale=0.3, norm_scale=0.3)
    return cfg, params, Decoder(params, cfg)


@pytest.fixture(scope="session")
def evaluate_main():
    """``main`` of scripts/evaluate.py, imported from the script itself (argv list in, exit code out)."""
    import sys
    from pathlib import Path

    scripts = str(Path(__file__).resolve().parents[2] / "scripts")
    sys.path.insert(0, scripts)
    try:
        import evaluate  # noqa: PLC0415
    finally:
        sys.path.remove(scripts)
    return evaluate.main
