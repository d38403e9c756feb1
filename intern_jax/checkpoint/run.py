"""The run directory format: what training writes and what ``load_model`` reads back.

A run directory::

    run.json                  model config, execution policy, tokenizer path, train config, what
                              "params" holds
    checkpoints/<step>/       params (the trainable tree), train_state (optimizer state, step,
                              rng, counters), data (the input iterator's state, per process)
    metrics.jsonl, tensorboard/

``Checkpointer`` saves and restores steps (orbax CheckpointManager, async, keep-last/keep-every).
Restoring takes target shardings from the caller, so a checkpoint written on one mesh
restores onto another. A step that fails to restore (damaged file) is moved to
``checkpoints_damaged/`` with a warning and the previous one is used. ``load_run`` reads a
full-model run with the run's execution policy (``run_execution``: run.json files written before the
policy left the model config carry it there); ``load_adapter_run`` rebuilds an adapter run's base and merges its LoRA
adapters into it (as PEFT merges). Nothing here trains.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

from intern_jax.checkpoint.loaded import LoadedModel, place_params
from intern_jax.checkpoint.native import damage_reason
from intern_jax.config import ConfigError, Execution, ModelConfig, check_fields, model_config_from_dict, split_execution
from intern_jax.model import internlm2
from intern_jax.model import lora as L
from intern_jax.tokenizer import load_tokenizer

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"
RUN_FORMAT = "intern-jax-run"
ADAPTER_KIND = "lora"  # run.json "trainable" of adapter runs

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Save every ``save_every`` steps (0: only at the end); keep the last ``keep_last`` and
    every step divisible by ``keep_every`` (0: none kept beyond the last ones)."""

    save_every: int = 1000
    keep_last: int = 3
    keep_every: int = 0
    async_save: bool = True

    def __post_init__(self):
        check_fields(self, "checkpoint.")
        if self.save_every < 0 or self.keep_every < 0 or self.keep_last < 1:
            raise ConfigError("checkpoint.save_every and keep_every must be >= 0, keep_last >= 1")


def write_run_json(run_dir, model_cfg: ModelConfig, train_config: dict | None, tokenizer_path=None,
                   *, trainable: str = "model", extra: dict | None = None,
                   execution: Execution | None = None) -> Path:
    """Describe the run for readers (convert.py, chat.py): ``train_config`` is the train config as a
    JSON-ready dict; ``execution`` how the model ran; ``trainable="model"`` means the checkpoints'
    ``params`` item is the full model params tree."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "format": RUN_FORMAT,
        "trainable": trainable,
        "model_config": dataclasses.asdict(model_cfg),
        "execution": dataclasses.asdict(execution or Execution()),
        "tokenizer": _relative_to(tokenizer_path, run_dir) if tokenizer_path else None,
        "train_config": train_config,
        **(extra or {}),
    }
    path = run_dir / RUN_FILE
    if jax.process_index() == 0:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(path)
    return path


def _relative_to(path, run_dir: Path) -> str:
    """``path`` relative to the run directory when it lies inside it (the run can be moved), else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path(run_dir).absolute()))
    except ValueError:
        return str(path)


def run_tokenizer_path(run_dir, record: dict) -> Path | None:
    """The tokenizer that run.json names (relative paths are inside the run directory); an absolute
    path that no longer exists falls back to the run's own ``tokenizer/`` copy."""
    if not record.get("tokenizer"):
        return None
    path = Path(run_dir) / record["tokenizer"]
    if not path.exists() and (Path(run_dir) / "tokenizer").exists():
        return Path(run_dir) / "tokenizer"
    return path


def read_run_json(run_dir) -> dict:
    path = Path(run_dir) / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable run description ({e})") from None
    if record.get("format") != RUN_FORMAT:
        raise ValueError(f"{path} is not an intern-jax run description (format={record.get('format')!r})")
    return record


# orbax warnings that every normal resume or read-only load prints, and that ask nothing of the user
_ROUTINE_ORBAX_WARNINGS = ("Metadata file does not exist", "Given directory is read only",
                           "CheckpointManagerOptions.read_only=True")


class _DropRoutineWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ROUTINE_ORBAX_WARNINGS)


def _ocp():
    import orbax.checkpoint as ocp  # noqa: PLC0415  (heavy import)

    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropRoutineWarnings) for f in absl_logger.filters):
        absl_logger.addFilter(_DropRoutineWarnings())
    return ocp


class CheckpointMismatch(ValueError):
    """A readable checkpoint that does not fit the current config (not damage: nothing is moved).
    Other readers subclass it for their own part of a checkpoint (the data pipeline's iterator state)."""


class Checkpointer:
    """Saves and restores ``(params, train_state, data iterator)`` per step under ``run_dir/checkpoints``."""

    def __init__(self, run_dir, cfg: CheckpointConfig, *, read_only: bool = False):
        self.run_dir = Path(run_dir).absolute()
        self.directory = self.run_dir / CHECKPOINT_DIR
        self.cfg = cfg
        self.read_only = read_only
        self._manager = self._open()

    def _open(self):
        ocp = _ocp()
        policies = [ocp.checkpoint_managers.LatestN(max(self.cfg.keep_last, 1))]
        if self.cfg.keep_every > 0:
            policies.append(ocp.checkpoint_managers.EveryNSteps(self.cfg.keep_every))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=self.cfg.async_save,
            create=not self.read_only,
            read_only=self.read_only,
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: dict, data_iterator=None) -> None:
        """Start an (async) save of ``state`` and the iterator's current position at ``step``."""
        ocp = _ocp()
        params = state["params"]
        rest = {k: v for k, v in state.items() if k != "params"}
        items = {"params": ocp.args.StandardSave(params), "train_state": ocp.args.StandardSave(rest)}
        if data_iterator is not None:
            items["data"] = data_save_args(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore_latest(self, abstract_state: dict, data_iterator=None):
        """``(step, state)`` from the newest readable checkpoint (the data iterator is set in
        place), or None when there is none. Damaged steps are moved aside with a warning;
        a checkpoint of another shape (changed config) or an iterator state made with other
        settings is an error, and nothing is moved."""
        while (step := self.latest_step()) is not None:
            try:
                self._check_shapes(step, abstract_state)
                return step, self.restore(step, abstract_state, data_iterator)
            except CheckpointMismatch:  # a setting to fix, e.g. the data pipeline's IteratorStateMismatch
                raise
            except Exception as e:  # noqa: BLE001  (any other failure to read means: damaged)
                self._quarantine(step, e)
        return None

    def _check_shapes(self, step: int, abstract_state: dict) -> None:
        ocp = _ocp()
        meta = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "params").item_metadata.tree
        flat = lambda tree: {jax.tree_util.keystr(k): tuple(v.shape) for k, v in  # noqa: E731
                             jax.tree_util.tree_flatten_with_path(tree)[0]}
        stored, wanted = flat(meta), flat(abstract_state["params"])
        if stored != wanted:
            diff = [f"{k}: stored {stored.get(k)}, config wants {wanted.get(k)}"
                    for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
            raise CheckpointMismatch(
                f"checkpoint step {step} in {self.directory} holds params of another shape than this "
                f"config ({'; '.join(diff[:3])}); resume with the run's own config (see run.json) or "
                "train into a new --output directory"
            )

    def restore(self, step: int, abstract_state: dict, data_iterator=None) -> dict:
        ocp = _ocp()
        rest = {k: v for k, v in abstract_state.items() if k != "params"}
        items = {
            "params": ocp.args.StandardRestore(abstract_state["params"]),
            "train_state": ocp.args.StandardRestore(rest),
        }
        if data_iterator is not None:
            items["data"] = data_restore_args(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = {"params": restored["params"], **restored["train_state"]}
        _check_finite_params(state["params"], step)
        return state

    def restore_params(self, step: int, abstract_params):
        ocp = _ocp()
        args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001  (tensorstore and orbax report damaged files with many types)
            raise ValueError(f"checkpoint step {step} in {self.directory} cannot be read ({damage_reason(e)}); it is "
                             "damaged: rerun the training command (it moves damaged steps aside and resumes from "
                             "the previous one)") from e
        return restored["params"]

    def _quarantine(self, step: int, error: Exception) -> None:
        warnings.warn(
            f"checkpoint step {step} in {self.directory} cannot be restored ({type(error).__name__}: "
            f"{str(error)[:300]}); moving it to {self.run_dir / DAMAGED_DIR} and using the previous one",
            stacklevel=3,
        )
        self._manager.close()
        if jax.process_index() == 0:
            target = self.run_dir / DAMAGED_DIR / str(step)
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(target))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        self._manager = self._open()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _check_finite_params(params, step: int) -> None:
    finite = jax.tree.reduce(
        lambda a, b: a & b, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x.astype(jnp.float32))), params)
    )
    if not bool(finite):
        raise ValueError(f"checkpoint step {step} holds non-finite parameters")


def data_save_args(iterator):
    """orbax ``args`` that save a grain iterator's state: ``ocp.args.Composite(..., data=data_save_args(it))``."""
    from grain.checkpoint import CheckpointSave  # noqa: PLC0415  (grain: only for runs that save an iterator)

    return CheckpointSave(iterator)


def data_restore_args(iterator):
    """orbax ``args`` that restore the state into ``iterator`` (a freshly made one with the same config)."""
    from grain.checkpoint import CheckpointRestore  # noqa: PLC0415

    return CheckpointRestore(iterator)


def run_execution(record: dict) -> Execution:
    """The execution policy a run.json records: its ``execution``, or, in files written before the
    policy left the model config, the execution fields inside ``model_config``."""
    if "execution" in record:
        return Execution(**record["execution"])
    return Execution(**split_execution(record.get("model_config", {}))[1])


def load_run(run_dir, *, dtype=None, mesh=None, step: int | None = None):
    """``LoadedModel(config, params, tokenizer, execution)`` from a pretraining run: the params of the
    latest (or given) checkpoint, placed with the model's shardings on ``mesh`` (default:
    the first device) and cast to ``dtype`` if given (then computed in it, too); the run's policy."""
    run_dir = Path(run_dir).absolute()
    record = read_run_json(run_dir)
    if record.get("trainable", "model") != "model":
        raise ValueError(
            f"{run_dir} holds '{record.get('trainable')}' checkpoints, not full model params; "
            "load it with the fine-tuning tools"
        )
    try:
        cfg = model_config_from_dict(record["model_config"])
        execution = run_execution(record)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{run_dir / RUN_FILE} holds no usable model_config ({e}); is the run directory "
                         "damaged? rerun the training command to rewrite it") from None
    ckpt = Checkpointer(run_dir, CheckpointConfig(async_save=False), read_only=True)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{run_dir / CHECKPOINT_DIR} holds no finished checkpoint yet")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ValueError(f"{run_dir} has no checkpoint for step {step}; steps: {steps}")
        if mesh is not None:
            shardings = internlm2.param_shardings(cfg, mesh)
        else:
            single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            shardings = jax.tree.map(lambda _: single, internlm2.abstract(cfg))
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), internlm2.abstract(cfg), shardings
        )
        params = ckpt.restore_params(step, target)
    finally:
        ckpt.close()
    if dtype is not None and jnp.dtype(dtype) != jnp.dtype(cfg.param_dtype):
        name = jnp.dtype(dtype).name
        params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(name), p), out_shardings=shardings)(params)
        cfg = dataclasses.replace(cfg, param_dtype=name)
        execution = dataclasses.replace(execution, dtype="")
    tokenizer = None
    if (tokenizer_path := run_tokenizer_path(run_dir, record)) is not None:
        if not tokenizer_path.exists():
            raise FileNotFoundError(f"the tokenizer of run {run_dir}, {tokenizer_path}, does not exist; put it back "
                                    f"or copy it to {run_dir / 'tokenizer'}")
        tokenizer = load_tokenizer(tokenizer_path)
    return LoadedModel(cfg, params, tokenizer, execution)


def load_adapters(run_dir, step: int | None = None):
    """(run.json record, LoadedModel of the base, LoraConfig, adapters) of an adapter run."""
    run_dir = Path(run_dir).absolute()
    record = read_run_json(run_dir)
    if record.get("trainable") != ADAPTER_KIND:
        raise ValueError(f"{run_dir} is not an adapter run (trainable={record.get('trainable')!r})")
    base_path = Path(record["base_model"])
    if not base_path.exists():
        raise FileNotFoundError(f"{run_dir}: its base model {base_path} (run.json base_model) no longer exists")
    from intern_jax.checkpoint import load_model  # noqa: PLC0415  (load_model reads run directories with this module)

    base = load_model(base_path, dtype=record.get("finetune", {}).get("base_dtype"))
    lora = L.LoraConfig(**record["lora"])
    abstract = L.abstract_lora(base.params, lora)
    ckpt = Checkpointer(run_dir, CheckpointConfig(async_save=False), read_only=True)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{run_dir} holds no finished checkpoint yet")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ValueError(f"{run_dir} has no checkpoint for step {step}; steps: {steps}")
        single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=single), abstract)
        adapters = ckpt.restore_params(step, target)
    finally:
        ckpt.close()
    tokenizer = base.tokenizer
    tokenizer_path = run_tokenizer_path(run_dir, record)
    if tokenizer_path is not None and tokenizer_path.exists():
        tokenizer = load_tokenizer(tokenizer_path)
    return record, base._replace(tokenizer=tokenizer), lora, adapters


def load_adapter_run(run_dir, *, dtype=None, mesh=None, step: int | None = None):
    """``LoadedModel`` of an adapter run with the adapters merged into the base (``load_model`` uses this)."""
    _, base, lora, adapters = load_adapters(run_dir, step)
    params = jax.jit(lambda p, a: L.merge_lora(L.apply_lora(p, a, lora)))(base.params, adapters)
    cfg = base.config
    if dtype is not None:
        name = jnp.dtype(dtype).name
        params = jax.tree.map(lambda x: x.astype(name), params)
        cfg = dataclasses.replace(cfg, param_dtype=name)
    if mesh is not None:
        params = place_params(jax.device_get(params), cfg, mesh)
    return base._replace(config=cfg, params=params)
