"""What every checkpoint loader returns: ``LoadedModel(config, params, tokenizer, execution)``, and placing host
params. ``execution`` is how the model was run where the checkpoint says so (a training run directory's policy),
else the default (compute in the params' dtype)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from intern_jax.config import Execution, ModelConfig
from intern_jax.model import internlm2


class LoadedModel(NamedTuple):
    config: ModelConfig
    params: Any
    tokenizer: Any  # intern_jax.tokenizer.Tokenizer, or None when the checkpoint carries none
    execution: Execution = Execution()


def place_params(host_params, cfg: ModelConfig, mesh=None):
    """Host (numpy) params onto devices: sharded per the model's specs with a mesh, else default device."""
    if mesh is None:
        return jax.device_put(host_params)
    return jax.device_put(host_params, internlm2.param_shardings(cfg, mesh))
