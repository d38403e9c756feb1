"""Pretraining entry: resolve a config (tokenizer vocabulary, data) and run the shared loop.

``prepare_run`` loads the config file and fills what depends on files on disk (a model
``vocab_size`` of 0 takes the tokenizer's); ``pretrain`` builds the data iterator and calls
``run_training``. Fine-tuning has its own entry and reuses the loop, not this module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from intern_jax.config import ConfigError
from intern_jax.train.config import TrainConfig, load_train_config
from intern_jax.train.loop import TrainResult, make_data_iterator, run_training


def prepare_run(config_path, overrides=()) -> TrainConfig:
    cfg = load_train_config(config_path, overrides)
    if hasattr(cfg.data, "prepare"):
        cfg = dataclasses.replace(cfg, data=cfg.data.prepare())
    model = cfg.model_config
    if model.vocab_size == 0:
        if not cfg.tokenizer:
            raise ConfigError("model.vocab_size is 0 (take it from the tokenizer) but no tokenizer is set")
        from intern_jax.tokenizer import load_tokenizer  # noqa: PLC0415

        if not Path(cfg.tokenizer).exists():
            raise FileNotFoundError(f"tokenizer {cfg.tokenizer} does not exist")
        vocab = load_tokenizer(cfg.tokenizer).vocab_size
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(model, vocab_size=vocab))
    return cfg


def pretrain(cfg: TrainConfig, run_dir) -> TrainResult:
    model = cfg.model_config
    return run_training(
        model, cfg, run_dir=run_dir, data_iterator=make_data_iterator(cfg, model),
        tokenizer_path=cfg.tokenizer or None,
    )
