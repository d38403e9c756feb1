"""Pretraining entry: resolve a config (tokenizer vocabulary, data) and run the shared loop.

``prepare_run`` loads the config file and fills what depends on files on disk (a model
``vocab_size`` of 0 takes the tokenizer's); ``pretrain`` builds the data iterator and calls
``run_training``. Fine-tuning has its own entry and reuses the loop, not this module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from intern_jax.config import ConfigError
from intern_jax.sharding import make_mesh
from intern_jax.train.config import TrainConfig, load_train_config
from intern_jax.train.loop import TrainResult, make_data_iterator, make_eval_batches, run_training


def prepare_run(config_path, overrides=()) -> TrainConfig:
    """The run's config with files resolved: the embedded corpus is built if the data asks for
    it and it is absent; a model ``vocab_size`` of 0 becomes the tokenizer's."""
    cfg = load_train_config(config_path, overrides)
    ensure_corpus(cfg.data)
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


def ensure_corpus(data) -> None:
    """Build the embedded stdlib corpus when ``data.path`` is its default directory and empty;
    any other corpus without a manifest is an error naming the tool that makes one."""
    from intern_jax.data.pipeline import MANIFEST, DataConfig  # noqa: PLC0415

    if not isinstance(data, DataConfig) or (Path(data.path) / MANIFEST).is_file():
        return
    from intern_jax.data import corpus  # noqa: PLC0415

    if Path(data.path).absolute() != Path(corpus.DEFAULT_DIR).absolute():
        raise FileNotFoundError(
            f"data.path {data.path!r} holds no {MANIFEST}; process a corpus into it with "
            f"scripts/process_data.py, or use {corpus.DEFAULT_DIR} (built automatically from the stdlib)"
        )
    import jax  # noqa: PLC0415

    if jax.process_index() == 0:
        corpus.build_corpus(data.path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices("embedded corpus built")


def pretrain(cfg: TrainConfig, run_dir) -> TrainResult:
    model = cfg.model_config
    mesh = make_mesh(cfg.parallel.mesh_shape())
    return run_training(
        model, cfg, run_dir=run_dir, data_iterator=make_data_iterator(cfg, model, mesh), mesh=mesh,
        tokenizer_path=cfg.tokenizer or None, eval_batches=make_eval_batches(cfg, mesh),
    )
