"""Pretraining entry: resolve a config (tokenizer vocabulary, data) and run the shared loop.

``prepare_run`` loads the config file and fills what depends on files on disk (a model
``vocab_size`` of 0 takes the tokenizer's); ``pretrain`` builds the data iterator and calls
``run_training``. Fine-tuning has its own entry and reuses the loop, not this module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from intern_jax.config import ConfigError
from intern_jax.data.config import DataConfig
from intern_jax.sharding import make_mesh
from intern_jax.tokenizer import load_tokenizer
from intern_jax.train.config import TrainConfig, load_train_config
from intern_jax.train.loop import TrainResult, TrainRun, make_data_iterator, make_eval_batches, run_training


def prepare_run(config_path, overrides=()) -> TrainConfig:
    """The run's config with files resolved: the embedded corpus is built if the data asks for
    it and it is absent; a model ``vocab_size`` of 0 becomes the tokenizer's; the corpus must have
    been tokenized with the run's tokenizer (``check_corpus_tokenizer``)."""
    cfg = load_train_config(config_path, overrides)
    ensure_corpus(cfg.data)
    cfg = resolve_vocab_size(cfg)
    check_corpus_tokenizer(cfg)
    return cfg


def resolve_vocab_size(cfg: TrainConfig, hint: str = "") -> TrainConfig:
    """``cfg`` with a model ``vocab_size`` of 0 replaced by its tokenizer's (``hint``: what to do when
    the tokenizer is not there yet)."""
    model = cfg.model_config
    if model.vocab_size:
        return cfg
    if not cfg.tokenizer:
        raise ConfigError("model.vocab_size is 0 (take it from the tokenizer) but no tokenizer is set; "
                          "set tokenizer=PATH or model.vocab_size=N")
    if not Path(cfg.tokenizer).exists():
        raise FileNotFoundError(f"tokenizer {cfg.tokenizer} does not exist (model.vocab_size is 0: it is taken "
                                f"from the tokenizer){hint}")
    vocab = load_tokenizer(cfg.tokenizer).vocab_size
    return dataclasses.replace(cfg, model=dataclasses.replace(model, vocab_size=vocab))


def check_corpus_tokenizer(cfg: TrainConfig) -> None:
    """A ConfigError, before any step, when the corpus at ``data.path`` holds token ids the model
    cannot embed, or was tokenized with another tokenizer than the run's ``tokenizer`` (compared
    by vocabulary size and by how they encode a probe text); the message says what differs."""
    from intern_jax.data.pipeline import read_manifest  # noqa: PLC0415  (grain: only when there is a corpus)

    if not isinstance(cfg.data, DataConfig):
        return
    manifest = read_manifest(cfg.data.path)
    corpus_vocab = int(manifest.get("vocab_size") or 0)
    corpus_tok = manifest.get("tokenizer")
    corpus_tok = Path(cfg.data.path) / corpus_tok if corpus_tok else None
    model_vocab = cfg.model_config.vocab_size
    if corpus_vocab > model_vocab:
        raise ConfigError(
            f"the corpus at data.path={cfg.data.path} was tokenized with a {corpus_vocab}-token vocabulary "
            f"({corpus_tok or 'tokenizer not recorded'}) but the model's vocab_size is {model_vocab}: its ids would "
            "fall outside the embedding. Train with the corpus's tokenizer (--set tokenizer=... and "
            "model.vocab_size=0), or process the corpus again with the run's tokenizer"
        )
    if not cfg.tokenizer or corpus_tok is None:
        return
    if corpus_tok.exists() and Path(cfg.tokenizer).absolute().resolve() == corpus_tok.absolute().resolve():
        return
    ours = load_tokenizer(cfg.tokenizer)
    if not corpus_tok.exists():  # moved or deleted: only the recorded vocabulary size is left to compare
        if corpus_vocab and corpus_vocab != ours.vocab_size:
            raise ConfigError(
                f"the corpus at data.path={cfg.data.path} records a {corpus_vocab}-token tokenizer ({corpus_tok}, "
                f"no longer there) but the run's tokenizer {cfg.tokenizer} has {ours.vocab_size} tokens; process the "
                "corpus again with the run's tokenizer"
            )
        return
    theirs = load_tokenizer(corpus_tok)
    if ours.vocab_size != theirs.vocab_size:
        differs = f"vocabularies of {theirs.vocab_size} and {ours.vocab_size} tokens"
    elif ours.encode(_PROBE) != theirs.encode(_PROBE):
        differs = f"the same vocabulary size ({ours.vocab_size}) but different token ids for the same text"
    else:
        return
    raise ConfigError(
        f"the corpus at data.path={cfg.data.path} was tokenized with {corpus_tok}, not with the run's tokenizer "
        f"{cfg.tokenizer}: {differs}. Set tokenizer={corpus_tok}, or process the corpus again with {cfg.tokenizer}"
    )


_PROBE = "def main(argv=None):\n    return 0  # The quick brown fox, 1234 \u00e9t\u00e9 \u4e2d\u6587.\n"


def ensure_corpus(data) -> None:
    """Build the embedded stdlib corpus when ``data.path`` is its default directory and empty;
    any other corpus without a manifest is an error naming the tool that makes one."""
    from intern_jax.data.pipeline import MANIFEST  # noqa: PLC0415  (grain: only when there is a corpus)

    if not isinstance(data, DataConfig) or (Path(data.path) / MANIFEST).is_file():
        return
    from intern_jax.data import corpus  # noqa: PLC0415

    if Path(data.path).absolute() != Path(corpus.DEFAULT_DIR).absolute():
        raise FileNotFoundError(
            f"data.path {data.path!r} holds no {MANIFEST}; process a corpus into it with "
            f"scripts/process_data.py, or use {corpus.DEFAULT_DIR} (built automatically from the stdlib)"
        )
    if jax.process_index() == 0:
        corpus.build_corpus(data.path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices("embedded corpus built")


def pretrain(cfg: TrainConfig, run_dir) -> TrainResult:
    """Run ``cfg`` in ``run_dir``; the tokenizer is copied into ``run_dir/tokenizer`` (run.json names the
    copy, so the run directory can be moved and still loads)."""
    model = cfg.model_config
    mesh = make_mesh(cfg.parallel.mesh_shape())
    return run_training(TrainRun(
        model, cfg, run_dir, make_data_iterator(cfg, model, mesh), mesh=mesh,
        tokenizer_path=copy_tokenizer(cfg.tokenizer, run_dir) if cfg.tokenizer else None,
        eval_batches=make_eval_batches(cfg, mesh),
    ))


def copy_tokenizer(path, run_dir) -> Path:
    """``run_dir/tokenizer``: the tokenizer at ``path`` saved there once (by process 0)."""
    target = Path(run_dir) / "tokenizer"
    if jax.process_index() == 0 and not target.exists():
        tmp = target.with_name("tokenizer.tmp")
        load_tokenizer(path).save(tmp)
        tmp.replace(target)
    return target
