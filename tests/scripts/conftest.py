"""A tiny random model saved as a native checkpoint, for the scripts run as child processes here."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(smollm2, tmp_path_factory) -> Path:
    """A 2-layer random model with SmolLM2's tokenizer (quick to load and compile), saved once per session."""
    from intern_jax import testing
    from intern_jax.checkpoint import save_native

    cfg = testing.tiny_config(vocab_size=smollm2.tokenizer.vocab_size, max_position_embeddings=512)
    path = tmp_path_factory.mktemp("scripts") / "tiny"
    save_native(path, cfg, testing.random_params(cfg, 0, scale=0.3), smollm2.tokenizer)
    return path
