"""Typed, frozen configuration of a training run: optimizer, parallelism, checkpoints, logging.

``TrainConfig`` nests the ``ModelConfig`` (or a path to a model config file), how the model
runs (``config.Execution``: compute dtype, remat, attention kernel), the data pipeline's config
and the groups below; ``load_train_config`` reads a config file and
applies ``--set a.b=value`` overrides with the same rules as ``intern_jax.config``.
Defaults here are generic; the numbers of particular runs live in ``configs/pretrain/``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intern_jax import sharding as shd
from intern_jax.checkpoint.run import CheckpointConfig
from intern_jax.config import ConfigError, Execution, ModelConfig, apply_overrides, check_fields, load_config

ZERO_MODES = ("none", "full", "hybrid")
ZERO_AXES = ("fsdp", "sequence")  # the mesh axes over which ZeRO shards training state


SCHEDULES = ("cosine", "linear", "constant", "wsd")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup, then a decay to ``learning_rate * min_lr_ratio`` at ``decay_steps``.

    ``schedule`` after warmup: ``cosine`` (InternEvo's), ``linear``, ``constant`` (the peak, no
    decay) or ``wsd`` (warmup-stable-decay: the peak until the last ``wsd_decay_fraction`` of
    the post-warmup steps, then linear to the floor; a run can be extended from a checkpoint
    taken in the stable phase). ``decay_steps`` counts from the start of training (warmup
    included); 0 means the run's ``steps``. ``z_loss`` adds ``z_loss * logsumexp(logits)**2``
    per counted token.
    """

    learning_rate: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    decay_steps: int = 0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    z_loss: float = 0.0
    schedule: str = "cosine"
    wsd_decay_fraction: float = 0.1

    def __post_init__(self):
        check_fields(self, "optimizer.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optimizer.schedule={self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not 0.0 < self.wsd_decay_fraction <= 1.0:
            raise ConfigError(f"optimizer.wsd_decay_fraction must be in (0, 1], got {self.wsd_decay_fraction}")
        if self.learning_rate <= 0:
            raise ConfigError(f"optimizer.learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optimizer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ConfigError("optimizer.warmup_steps and optimizer.decay_steps must be >= 0")


@dataclass(frozen=True)
class ParallelConfig:
    """Mesh shape and how much state is sharded.

    Mesh axes: ``data`` (replicas), ``fsdp`` (the group that shards state), ``sequence``
    (context parallel: each device holds a contiguous slice of every sequence; attention
    gathers the keys and values of the whole sequence), ``tensor`` (heads / mlp / vocab
    split). One axis may be -1 (the remaining devices). ``zero``:

    - ``none``: params, grads and optimizer state replicated over data, fsdp and sequence (plain DP);
    - ``full``: all three sharded over ``fsdp`` (ZeRO-3 / FSDP; with data > 1 this is
      hybrid-sharded data parallel: sharded inside a group, replicated across groups);
    - ``hybrid``: InternEvo's Hybrid ZeRO: params replicated; gradients reduced onto, and
      optimizer state held by, each device's shard inside its ``fsdp`` group (InternEvo's
      ``zero1`` size), replicated across the ``data`` axis.

    The batch is split over ``data`` x ``fsdp`` in every mode, and its positions over
    ``sequence``: ``seq_len`` must divide by it. The devices of a ``sequence`` group hold the same
    weights, so whatever ``zero`` shards over ``fsdp`` is sharded over ``fsdp`` x ``sequence``
    (as Megatron's distributed optimizer shards over data x context-parallel ranks). ``micro_batches``
    splits each step's batch for gradient accumulation.

    ``rules`` maps the model's logical axes onto mesh axes (``sharding.DEFAULT_RULES`` unless a
    run says otherwise); ``zero`` then decides which of them shard params and optimizer state
    (``state_rules``).
    """

    data: int = 1
    fsdp: int = -1
    sequence: int = 1
    tensor: int = 1
    zero: str = "full"
    micro_batches: int = 1
    rules: dict = field(default_factory=lambda: dict(shd.DEFAULT_RULES))

    def __post_init__(self):
        check_fields(self, "parallel.")
        if self.zero not in ZERO_MODES:
            raise ConfigError(f"parallel.zero={self.zero!r}; use one of {', '.join(ZERO_MODES)}")
        if self.micro_batches < 1:
            raise ConfigError(f"parallel.micro_batches must be >= 1, got {self.micro_batches}")
        sizes = (self.data, self.fsdp, self.sequence, self.tensor)
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"parallel mesh sizes {sizes}: each must be >= 1, at most one may be -1")
        if not isinstance(self.rules, Mapping):
            raise ConfigError(f"parallel.rules must be a dict of logical axis -> mesh axes, got {self.rules!r}")
        try:
            shd.check_rules(self.rules)
        except ValueError as e:
            raise ConfigError(f"parallel.rules: {e}") from None

    def mesh_shape(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "sequence": self.sequence, "tensor": self.tensor}

    def state_rules(self) -> tuple[dict, dict]:
        """Rules for (params and gradients, optimizer state) under ``zero``: ``full`` shards both as
        ``rules`` say; ``hybrid`` replicates params over the axes that shard state (``fsdp`` and
        ``sequence``) and keeps the optimizer state sharded; ``none`` replicates both."""
        sharded = dict(self.rules)
        replicated = shd.without_mesh_axes(sharded, ZERO_AXES)
        modes = {"full": (sharded, sharded), "hybrid": (replicated, sharded), "none": (replicated, replicated)}
        return modes[self.zero]


@dataclass(frozen=True)
class LoggingConfig:
    """Log every ``log_every`` steps to metrics.jsonl (and TensorBoard). ``peak_flops``: the
    per-device peak FLOP/s for MFU; 0 looks the device up in ``metrics.PEAK_FLOPS``.
    ``profile_steps`` > 0 records a JAX profiler trace of that many steps from step
    ``profile_start`` (1-based) into ``RUN/tensorboard/plugins/profile`` (TensorBoard's Profile tab)."""

    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    peak_flops: float = 0.0
    profile_start: int = 5
    profile_steps: int = 0

    def __post_init__(self):
        check_fields(self, "logging.")
        if self.log_every < 1:
            raise ConfigError(f"logging.log_every must be >= 1, got {self.log_every}")
        if self.profile_start < 1 or self.profile_steps < 0:
            raise ConfigError(
                f"logging.profile_start must be >= 1 and profile_steps >= 0 (0 = no trace), got "
                f"{self.profile_start} and {self.profile_steps}"
            )


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation during training: every ``every`` steps (0: never) and after the last
    step, the loss over at most ``max_batches`` batches per source (0: all of them). The
    documents are the training corpus's held-out ones (``data.holdout``), or every document of
    the corpus at ``path`` when it is set. Logged as ``eval_loss``, ``eval_ppl``,
    ``eval_tokens`` and ``eval_loss/SOURCE`` in the step's metrics record."""

    every: int = 0
    max_batches: int = 16
    path: str = ""

    def __post_init__(self):
        if not isinstance(self.every, int) or self.every < 0:
            raise ConfigError(f"eval.every must be an integer >= 0 (0 = no evaluation), got {self.every!r}")
        if not isinstance(self.max_batches, int) or self.max_batches < 0:
            raise ConfigError(f"eval.max_batches must be an integer >= 0 (0 = all), got {self.max_batches!r}")

    def check_source(self, data, items: str = "documents", example: float = 0.01,
                     path: str = "an evaluation corpus") -> None:
        """A ConfigError when evaluation is on but ``data`` holds nothing out and no ``path`` is set."""
        if self.every and not self.path and not getattr(data, "holdout", 0):
            raise ConfigError(
                f"eval.every={self.every} but there is nothing to evaluate on: set data.holdout (the "
                f"fraction of {items} held out of training, e.g. {example}) or eval.path ({path})"
            )


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``model`` is a ModelConfig or the path of a model config file (None only
    where the run takes it from a checkpoint: fine-tuning, ``FinetuneConfig.train``);
    ``execution`` how it runs (compute dtype, remat, attention kernel);
    ``data`` is the input pipeline's config (``intern_jax.data.pipeline.DataConfig``, or
    ``train.synthetic.SyntheticData``). ``batch_size`` (global, all processes) and ``seq_len``
    are set here, once: a data config that leaves its own ``batch_size`` / ``seq_len`` at their
    defaults follows them (``data_config``), one that sets another value is an error. ``tokenizer``
    is a tokenizer path recorded in run.json. ``max_bad_steps`` non-finite steps in a row stop the run.
    ``loss_chunk_tokens``: the output head and cross-entropy run over this many sequence positions
    (of every row) at a time, recomputed in the backward pass; 0 = all at once. Same loss either way;
    chunking only matters once ``seq_len`` exceeds it (it saves ``[tokens, vocab]`` float32 logits).
    ``loss_chunk_vocab``: within a chunk, logits are computed this many vocabulary columns at a time
    (a fused head + cross-entropy with its own backward pass); 0 or >= the vocabulary = all at once."""

    model: Any
    data: Any = None
    execution: Execution = field(default_factory=Execution)
    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 512
    seed: int = 0
    max_bad_steps: int = 5
    loss_chunk_tokens: int = 512
    loss_chunk_vocab: int = 8192
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tokenizer: str = ""
    name: str = ""

    def __post_init__(self):
        check_fields(self)
        if self.model is not None and not isinstance(self.model, (ModelConfig, str, Path)):
            raise ConfigError(f"model must be a ModelConfig or a model config path, got {type(self.model).__name__}")
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 1:
            raise ConfigError(f"steps, batch_size and seq_len must be >= 1, got {self.steps}, {self.batch_size} and "
                              f"{self.seq_len}")
        if not 0 <= self.seed < 1 << 32:
            raise ConfigError(f"seed must be in [0, 2**32) (the PRNG key holds 32 bits), got {self.seed}")
        if self.batch_size % self.parallel.micro_batches:
            raise ConfigError(
                f"batch_size {self.batch_size} is not divisible by parallel.micro_batches "
                f"{self.parallel.micro_batches}"
            )
        if self.loss_chunk_tokens < 0:
            raise ConfigError(f"loss_chunk_tokens must be >= 0 (0 = unchunked), got {self.loss_chunk_tokens}")
        if self.loss_chunk_vocab < 0:
            raise ConfigError(f"loss_chunk_vocab must be >= 0 (0 = whole vocabulary), got {self.loss_chunk_vocab}")
        if self.max_bad_steps < 1:
            raise ConfigError(f"max_bad_steps must be >= 1, got {self.max_bad_steps}")
        self.eval.check_source(self.data)
        check_data_follows(self.data, batch_size=self.batch_size, seq_len=self.seq_len)

    @property
    def data_config(self):
        """``data`` as the run reads it: its ``batch_size`` and ``seq_len`` are the run's."""
        return data_following(self.data, batch_size=self.batch_size, seq_len=self.seq_len)

    @property
    def model_config(self) -> ModelConfig:
        """The ModelConfig itself (a path is loaded, relative to the working directory)."""
        if isinstance(self.model, ModelConfig):
            return self.model
        if self.model is None:
            raise ConfigError("model is not set; give a ModelConfig or a model config file (e.g. "
                              "model='configs/model/tiny.py')")
        cfg = load_config(self.model)
        if not isinstance(cfg, ModelConfig):
            raise ConfigError(f"{self.model} binds config to a {type(cfg).__name__}, not a ModelConfig")
        return cfg


def _run_settings(data, settings: dict) -> dict:
    """The run-wide ``settings`` that the data config ``data`` also has a field for."""
    if not dataclasses.is_dataclass(data):
        return {}
    names = {f.name for f in dataclasses.fields(data)}
    return {k: v for k, v in settings.items() if k in names}


def check_data_follows(data, **settings) -> None:
    """A ConfigError naming both settings when the data config sets ``batch_size`` or ``seq_len`` to
    something other than the run's (left at its default, it follows the run's)."""
    defaults = {f.name: f.default for f in dataclasses.fields(data)} if dataclasses.is_dataclass(data) else {}
    for key, value in _run_settings(data, settings).items():
        own = getattr(data, key)
        if own != value and own != defaults[key]:
            raise ConfigError(f"data.{key}={own} disagrees with {key}={value}: the run's {key} is set once, "
                              f"as {key}; drop data.{key} (it follows {key})")


def data_following(data, **settings):
    """``data`` with the run-wide ``settings`` (``batch_size``, ``seq_len``) it has fields for."""
    follow = _run_settings(data, settings)
    return dataclasses.replace(data, **follow) if follow else data


def load_train_config(path, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a pretrain config file (binding ``config``) and apply ``a.b=value`` overrides.

    A path-valued ``model`` is resolved into its ModelConfig first, so ``model.*`` keys can be set.
    """
    cfg = load_config(path)
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"{path} binds config to a {type(cfg).__name__}, not a TrainConfig")
    if not isinstance(cfg.model, ModelConfig):
        cfg = dataclasses.replace(cfg, model=cfg.model_config)
    return apply_overrides(cfg, overrides)


def train_config_to_dict(cfg: TrainConfig) -> dict:
    """JSON-ready dict (run.json; the data config as the run reads it); non-dataclass leaves such as paths
    become strings."""

    def convert(x):
        if dataclasses.is_dataclass(x):
            return {f.name: convert(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [convert(v) for v in x]
        if isinstance(x, dict):
            return {str(k): convert(v) for k, v in x.items()}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        return str(x)

    return convert(dataclasses.replace(cfg, data=cfg.data_config))


def check_run_flags(*, steps: int | None = None, save_every: int | None = None) -> None:
    """A ConfigError naming the flag, before any config file is read or corpus built."""
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be >= 1 (the total number of training steps), got {steps}")
    if save_every is not None and save_every < 0:
        raise ConfigError(f"--save-every must be >= 0 (0: save only at the end), got {save_every}")


def with_run_flags(cfg, *, steps: int | None = None, save_every: int | None = None, quiet: bool = False):
    """``cfg`` (a TrainConfig, or a FinetuneConfig: its ``train``) with the scripts' common flags applied:
    ``--steps``, ``--save-every`` and ``--quiet`` (no progress bar)."""
    if not isinstance(cfg, TrainConfig):
        return dataclasses.replace(cfg, train=with_run_flags(cfg.train, steps=steps, save_every=save_every,
                                                             quiet=quiet))
    check_run_flags(steps=steps, save_every=save_every)
    changes = {}
    if steps is not None:
        changes["steps"] = steps
    if save_every is not None:
        changes["checkpoint"] = dataclasses.replace(cfg.checkpoint, save_every=save_every)
    if quiet:
        changes["logging"] = dataclasses.replace(cfg.logging, progress=False)
    return dataclasses.replace(cfg, **changes)
