"""intern-jax: the InternLM chain (model, data, training, kernels, serving, evaluation, agents) on JAX.

The public face is small: ``load_model`` (any supported checkpoint format), ``generate`` /
``stream_generate`` / ``generate_text`` (the one decoding implementation), ``SamplingParams``,
``Decoder`` (what they all drive), ``ChatSession``, ``load_config`` and the configs
(``ModelConfig``: what a model is; ``Execution``: how it runs). Everything else lives in the sub-packages.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "intern_jax.checkpoint",
    "embedded_model_path": "intern_jax.checkpoint",
    "generate": "intern_jax.inference",
    "stream_generate": "intern_jax.inference",
    "generate_text": "intern_jax.inference",
    "SamplingParams": "intern_jax.inference",
    "ChatSession": "intern_jax.inference",
    "Decoder": "intern_jax.inference",
    "load_config": "intern_jax.config",
    "ModelConfig": "intern_jax.config",
    "Execution": "intern_jax.config",
    "load_tokenizer": "intern_jax.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'intern_jax' has no attribute {name!r}")
