"""Fine-tuning (XTuner's job): full, LoRA and QLoRA SFT or continued pretraining on the shared loop.

``finetune(cfg, run_dir)`` loads the base checkpoint, builds what the shared train step
trains (``trainable``: all params, or the adapters), what it only reads (``frozen``: the base,
NF4/int8-quantized for QLoRA) and ``assemble(trainable, frozen) -> params``, then calls
``train.loop.run_training`` -- the same step, checkpoints, metrics and resume as pretraining.
An adapter run's run.json records the base model and the LoRA / quantization settings;
reading it back (``load_model``, ``checkpoint.run.load_adapter_run``) rebuilds the base and merges
the adapters. No training logic of its own lives here.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from intern_jax.checkpoint import load_model
from intern_jax.checkpoint.run import ADAPTER_KIND
from intern_jax.config import ConfigError, check_fields, load_config
from intern_jax.data.sft import SFTDataConfig, load_examples, make_sft_eval_batches, make_sft_iterator
from intern_jax.model import lora as L
from intern_jax.model import qlora as Q
from intern_jax.model.lora import LoraConfig
from intern_jax.sharding import make_mesh
from intern_jax.train.config import CheckpointConfig, OptimizerConfig, TrainConfig
from intern_jax.train.loop import TrainedParams, TrainRun, make_eval_batches, run_training
from intern_jax.train.step import make_batch_sharding, process_row_block

log = logging.getLogger(__name__)

MODES = ("full", "lora", "qlora")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How QLoRA holds the frozen base: ``nf4`` or ``int8`` blocks of ``block`` values, NF4 scales
    optionally double-quantized; ``targets`` is a regex over parameter paths."""

    kind: str = "nf4"
    block: int = 64
    double_quant: bool = True
    targets: str = r"layers/(wqkv|wo|w1|w2|w3)"

    def __post_init__(self):
        check_fields(self, "quant.")
        if self.kind not in ("nf4", "int8"):
            raise ConfigError(f"quant.kind={self.kind!r}; use nf4 or int8")
        if self.block < 2 or self.block % 2:
            raise ConfigError(f"quant.block must be an even number >= 2 (values per scale; 64 is usual), got "
                              f"{self.block}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ConfigError(f"quant.targets {self.targets!r} is not a valid regex ({e})") from None


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run: the base checkpoint, how it is adapted, and the training run over it.

    ``base_model``: any checkpoint ``load_model`` reads, held in ``base_dtype`` (full mode: the trained
    params' dtype). ``mode``: full, lora or qlora (``lora``, ``quant``). ``train``: every setting of the
    training run, as in pretraining (steps, batch and sequence sizes, ``execution``, optimizer,
    parallelism, checkpoints, logging, ``eval``), with ``model`` left unset (the base checkpoint's
    config, taken when it is loaded) and ``data`` an ``SFTDataConfig``; ``train.eval`` evaluates on
    the examples that ``train.data.holdout`` keeps out of training (or every example of the file
    ``train.eval.path``). ``finetune_training`` gives the fine-tuning defaults."""

    base_model: str
    train: TrainConfig
    mode: str = "lora"
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    quant: QuantConfig = dataclasses.field(default_factory=QuantConfig)
    base_dtype: str = "float32"

    # keys of older fine-tuning configs and overrides, now in the training group
    MOVED_KEYS = {**{f.name: f"train.{f.name}" for f in dataclasses.fields(TrainConfig)},
                  "dtype": "train.execution.dtype", "remat": "train.execution.remat"}

    def __post_init__(self):
        check_fields(self)
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig (finetune_training(...) gives the fine-tuning "
                              f"defaults), got {type(self.train).__name__}")
        if self.train.model is not None:
            raise ConfigError("train.model must be left unset: fine-tuning takes the base checkpoint's config")
        if self.mode not in MODES:
            raise ConfigError(f"mode={self.mode!r}; use one of {', '.join(MODES)}")

    def train_config(self, model_cfg) -> TrainConfig:
        """The training run over the base model whose config is ``model_cfg``."""
        return dataclasses.replace(self.train, model=model_cfg)


def finetune_training(data: SFTDataConfig, **settings) -> TrainConfig:
    """A fine-tuning run's ``TrainConfig`` over ``data``: 2048-token rows, AdamW 2e-4 with 30 warmup
    steps, no weight decay, beta2 0.999, a checkpoint every 500 steps; ``settings`` override them."""
    defaults = {
        "seq_len": 2048,
        "optimizer": OptimizerConfig(learning_rate=2e-4, warmup_steps=30, weight_decay=0.0, b2=0.999),
        "checkpoint": CheckpointConfig(save_every=500),
    }
    return TrainConfig(model=None, data=data, **{**defaults, **settings})


def load_finetune_config(path, overrides=()) -> FinetuneConfig:
    cfg = load_config(path, overrides)
    if not isinstance(cfg, FinetuneConfig):
        raise ConfigError(f"{path} binds config to a {type(cfg).__name__}, not a FinetuneConfig")
    return cfg


# ---------------------------------------------------------------------------
# What the train step trains


@dataclasses.dataclass
class FinetuneSetup:
    """The model config to train with, what is trained (``run_training``'s ``TrainedParams``) and the
    base model's tokenizer."""

    model_cfg: object
    trained: TrainedParams
    tokenizer: object


def make_assemble(lora: LoraConfig):
    """``assemble(adapters, base, rng=None) -> params`` with LoRA weights.

    The train step passes a fresh ``rng`` each step and micro-batch; with ``lora.dropout > 0`` it
    seeds the dropout masks through XLA's bit generator (``rbg``: no per-element counters), one
    key per adapter and layer. Without ``rng`` there is no dropout (evaluation).
    """
    def assemble(trainable, frozen, rng=None):
        key = None
        if lora.dropout > 0 and rng is not None:
            key = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")
        return L.apply_lora(frozen, trainable, lora, dropout_key=key)

    return assemble


def prepare(cfg: FinetuneConfig, mesh, base=None, *, progress: bool = False) -> FinetuneSetup:
    """Load (or take) the base model and split it into trainable / frozen per ``cfg.mode``."""
    if base is None:
        if not Path(cfg.base_model).exists():
            raise FileNotFoundError(
                f"base_model {cfg.base_model} does not exist; point base_model at a GGUF file or a Hugging Face "
                "/ native checkpoint directory (e.g. --set base_model=/path/to/internlm2-chat-7b)"
            )
        base = load_model(cfg.base_model, dtype=cfg.base_dtype, progress=progress)
    if base.tokenizer is None:
        raise ValueError(f"base model {cfg.base_model} carries no tokenizer; SFT data cannot be rendered")
    model_cfg = base.config
    if cfg.mode == "full":
        return FinetuneSetup(model_cfg, TrainedParams(initial=base.params), base.tokenizer)
    frozen = base.params
    if cfg.mode == "qlora":
        frozen = Q.quantize_params(frozen, cfg.quant.kind, targets=cfg.quant.targets, block=cfg.quant.block,
                                   double_quant=cfg.quant.double_quant, progress=progress)
    adapters = L.init_lora(frozen, cfg.lora, jax.random.key(cfg.train.seed))
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), adapters)
    trained = TrainedParams(initial=adapters, frozen=frozen, assemble=make_assemble(cfg.lora), abstract=abstract,
                            shardings=jax.tree.map(lambda _: replicated, adapters), kind=ADAPTER_KIND)
    return FinetuneSetup(model_cfg, trained, base.tokenizer)


def run_record(cfg: FinetuneConfig, stats=None) -> dict:
    """What run.json says about a fine-tuning run beyond the train config."""
    record = {
        "base_model": str(Path(cfg.base_model).absolute()),
        "finetune": {"mode": cfg.mode, "base_dtype": cfg.base_dtype},
    }
    if cfg.mode != "full":
        record["lora"] = dataclasses.asdict(cfg.lora)
    if cfg.mode == "qlora":
        record["quant"] = dataclasses.asdict(cfg.quant)
    if stats is not None:
        record["data_stats"] = {"rows": stats.rows, "kept": stats.kept, "truncated": stats.truncated,
                                "tokens": stats.tokens, "loss_tokens": stats.loss_tokens,
                                "skipped": dict(stats.skipped)}
    return record


def finetune(cfg: FinetuneConfig, run_dir, *, base=None, on_step=None, progress: bool | None = None,
             compiler_options: dict | None = None, mesh=None):
    """Fine-tune per ``cfg`` into ``run_dir`` (resuming when it holds checkpoints); returns the TrainResult.

    ``base`` (a LoadedModel) skips loading ``cfg.base_model``; ``mesh`` (default: all devices shaped
    by ``cfg.train.parallel``), ``on_step`` and ``compiler_options`` go to ``run_training``.
    """
    progress = cfg.train.logging.progress if progress is None else progress
    run_dir = Path(run_dir).absolute()
    mesh = mesh if mesh is not None else make_mesh(cfg.train.parallel.mesh_shape())
    setup = prepare(cfg, mesh, base, progress=progress)
    train_cfg = cfg.train_config(setup.model_cfg)
    index, count = process_row_block(make_batch_sharding(mesh, train_cfg.parallel.rules), train_cfg.batch_size,
                                     train_cfg.seq_len)
    data = train_cfg.data_config
    loaded = load_examples(data, setup.tokenizer, progress=progress)
    data_iterator, stats = make_sft_iterator(
        data, setup.tokenizer, process_index=index, process_count=count, loaded=loaded,
    )
    eval_batches = make_eval_batches(train_cfg, mesh, load=lambda i, c: make_sft_eval_batches(
        data, setup.tokenizer, path=train_cfg.eval.path, process_index=i, process_count=c,
        max_batches=train_cfg.eval.max_batches, loaded=loaded,
    ))
    log.info("data: %s", stats.summary())
    if stats.skipped:
        print(f"data: {stats.summary()}", flush=True)
    tokenizer_dir = run_dir / "tokenizer"
    if jax.process_index() == 0 and not tokenizer_dir.exists():
        setup.tokenizer.save(tokenizer_dir)
    return run_training(TrainRun(
        setup.model_cfg, train_cfg, run_dir, data_iterator, mesh=mesh, trained=setup.trained,
        eval_batches=eval_batches, tokenizer_path=tokenizer_dir, run_extra=run_record(cfg, stats), on_step=on_step,
        compiler_options=compiler_options,
    ))
