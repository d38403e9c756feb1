"""Typed, frozen configuration objects, config-file loading and ``--set`` overrides.

A config file is plain Python that builds these dataclasses and binds them to a
module-level name ``config``. Overrides (``a.b=value``) are applied by path; an
unknown key fails with the list of valid ones. This module holds no defaults for
particular runs: those live in ``configs/``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import os
import runpy
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: leave its values unchecked
        return {}


def check_fields(cfg, prefix: str = "", *, recursive: bool = False) -> None:
    """A ConfigError naming ``prefix.field`` for a value of the wrong type (a string where a number
    belongs) or a float that is NaN (``x < 0`` is False for NaN, so range checks let it through)
    or infinite (allowed only for ``max_*`` fields, where it means no limit). ``recursive`` also
    checks nested config groups."""
    types = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint, key = getattr(cfg, f.name), types.get(f.name), f"{prefix}{f.name}"
        if recursive and dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, f"{key}.", recursive=True)
            continue
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key} must be a number, got {value!r}")
            if math.isnan(value) or (math.isinf(value) and not f.name.startswith("max_")):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
        elif hint is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        elif hint is bool and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        elif hint is str and not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{key} must be a string, got {value!r}")


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: ``none``, ``linear`` (positions / factor) or ``dynamic`` (NTK)."""

    type: str = "none"
    factor: float = 1.0

    def __post_init__(self):
        check_fields(self, "rope_scaling.")
        if self.type not in ("none", "linear", "dynamic"):
            raise ConfigError(
                f"rope_scaling.type={self.type!r} is not supported; use 'none', 'linear' or 'dynamic'"
            )
        if self.type != "none" and self.factor < 1.0:
            raise ConfigError(f"rope_scaling.factor must be >= 1, got {self.factor}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an InternLM2 / Llama-family decoder.

    ``attention_bias`` is InternLM2's ``bias`` (wqkv and wo); ``mlp_bias`` exists only in
    the Llama layout. ``param_dtype`` is the parameters' storage dtype. How the model runs
    (compute dtype, remat, attention kernel) is not the model's: see ``Execution``.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int = 0  # 0 -> hidden_size // num_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    param_dtype: str = "float32"
    initializer_range: float = 0.02
    name: str = ""

    # keys that older config files and overrides set here, and where they live now (in a training config)
    MOVED_KEYS = {name: f"execution.{name}" for name in ("dtype", "remat", "attention_impl", "attention_chunk")}

    def __post_init__(self):
        check_fields(self)
        if self.vocab_size < 0 or self.hidden_size < 1 or self.num_layers < 1 or self.num_heads < 1 \
                or self.num_kv_heads < 1 or self.intermediate_size < 1 or self.head_dim < 0:
            raise ConfigError("vocab_size must be >= 0 (0: take the tokenizer's), hidden_size, num_layers, num_heads, "
                              "num_kv_heads and intermediate_size >= 1")
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                    "set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}"
            )

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads


DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("xla", "pallas", "auto")


@dataclass(frozen=True)
class Execution:
    """How a model runs, as opposed to what it is (``ModelConfig``): the run's choice, carried by the
    training and fine-tuning configs and by a loaded model (``LoadedModel.execution``), and passed to
    ``internlm2.forward`` and the ``Decoder``.

    ``dtype``: the compute dtype; "" computes in the parameters' storage dtype
    (``ModelConfig.param_dtype``). ``remat``: what the backward pass of the layer stack keeps
    (none, full, dots, dots_no_batch; see ``model.remat``). ``attention_impl``: xla, pallas or auto
    (pallas where a kernel exists for the backend). ``attention_chunk``: queries per block of the
    XLA attention path when training (0: all at once); blocks hold ``[block, keys]`` scores instead
    of ``[queries, keys]``, and the backward pass recomputes them.
    """

    dtype: str = ""
    remat: str = "none"
    attention_impl: str = "xla"
    attention_chunk: int = 0

    def __post_init__(self):
        check_fields(self, "execution.")
        if self.dtype and self.dtype not in DTYPES:
            raise ConfigError(f"execution.dtype={self.dtype!r}; use {', '.join(DTYPES)} or '' (the params' dtype)")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"execution.remat={self.remat!r}; use {', '.join(REMAT_POLICIES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"execution.attention_impl={self.attention_impl!r}; use {', '.join(ATTENTION_IMPLS)}")
        if self.attention_chunk < 0:
            raise ConfigError(f"execution.attention_chunk must be >= 0 (0: all queries at once), got "
                              f"{self.attention_chunk}")

    def compute_dtype(self, cfg: ModelConfig) -> str:
        """The dtype the model computes in: ``dtype``, or the parameters' when it is ""."""
        return self.dtype or cfg.param_dtype


# The execution fields that model configs (and the run.json files written with them) once held.
EXECUTION_FIELDS = tuple(f.name for f in dataclasses.fields(Execution))


def split_execution(model_dict: dict) -> tuple[dict, dict]:
    """A model config dict (a run.json's ``model_config``, a native checkpoint's config) split into the
    model's own fields and the execution fields it carries from before they moved to ``Execution``.
    A recorded compute ``dtype`` equal to ``param_dtype`` becomes "" (the params' dtype), what it meant."""
    model = {k: v for k, v in model_dict.items() if k not in EXECUTION_FIELDS}
    execution = {k: v for k, v in model_dict.items() if k in EXECUTION_FIELDS}
    if execution.get("dtype") == model.get("param_dtype", "float32"):
        execution["dtype"] = ""
    return model, execution


# ---------------------------------------------------------------------------
# Loading and overrides


def load_config(path: str | Path, overrides: typing.Sequence[str] = (), name: str = "config"):
    """Run a Python config file, take its ``config`` object and apply ``a.b=value`` overrides."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a Python config file (e.g. "
                          "configs/pretrain/tiny.py)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        namespace = runpy.run_path(str(path))
    except SyntaxError as e:
        raise ConfigError(f"config file {path} is not valid Python: {e.msg} (line {e.lineno})") from e
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (any failure while running the file is a problem of that file)
        raise ConfigError(f"config file {path} failed while running: {type(e).__name__}: {e}") from e
    if name not in namespace:
        raise ConfigError(f"config file {path} defines no top-level '{name}'")
    return apply_overrides(namespace[name], overrides)


class _Rejected(ConfigError):
    """A value the config's own checks refuse (as opposed to an unknown key or an unparsable value)."""


def apply_overrides(cfg, overrides: typing.Sequence[str]):
    """Apply ``key.path=value`` overrides. Their order does not matter: one that the config rejects
    while others are not yet applied (``batch_size`` before the ``micro_batches`` it must divide
    by) is tried again after them, and only a value still rejected at the end is an error."""
    pending = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        pending.append((key, raw))
    while pending:
        rejected = []
        for key, raw in pending:
            try:
                cfg = _set_path(cfg, key.strip().split("."), raw.strip(), key)
            except _Rejected as e:
                rejected.append((key, raw, e))
        if len(rejected) == len(pending):
            error = rejected[0][2]
            raise ConfigError(str(error)) from error.__cause__
        pending = [(key, raw) for key, raw, _ in rejected]
    return cfg


def _set_path(obj, parts: list[str], raw: str, full_key: str):
    if not dataclasses.is_dataclass(obj):
        raise ConfigError(f"cannot set {full_key!r}: {type(obj).__name__} has no fields")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    head = parts[0]
    moved = getattr(type(obj), "MOVED_KEYS", {})
    if head not in fields and head in moved:
        now = ".".join([moved[head], *parts[1:]])
        raise ConfigError(f"config key {full_key!r} has moved: set {now} instead (--set {now}=...)")
    if head not in fields:
        raise ConfigError(
            f"unknown config key {full_key!r}: {type(obj).__name__} has no field {head!r}; "
            f"valid fields: {', '.join(sorted(fields))}"
        )
    current = getattr(obj, head)
    if len(parts) > 1:
        value = _set_path(current, parts[1:], raw, full_key)
    else:
        hints = typing.get_type_hints(type(obj))
        value = _coerce(raw, hints.get(head, type(current)), current, full_key)
    try:
        return dataclasses.replace(obj, **{head: value})
    except (TypeError, ValueError) as e:
        raise _Rejected(f"cannot set {full_key}={raw!r}: {e}") from e


def _coerce(raw: str, hint: Any, current: Any, key: str):
    origin = typing.get_origin(hint)
    if hint is bool or isinstance(current, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} expects a boolean, got {raw!r}")
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key} expects an integer, got {raw!r}") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key} expects a number, got {raw!r}") from None
    if hint is str:
        return raw
    if dataclasses.is_dataclass(hint) or dataclasses.is_dataclass(current):
        raise ConfigError(f"{key} is a group of settings; set its fields, e.g. {key}.<field>=...")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        return origin(value)
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def model_config_from_dict(d: dict) -> ModelConfig:
    """A ModelConfig from its dict; execution fields recorded inside it by older files are dropped
    (``split_execution`` reads them)."""
    d, _ = split_execution(d)
    scaling = d.pop("rope_scaling", None) or {}
    valid = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(d) - valid
    if unknown:
        raise ConfigError(
            f"unknown model config fields {sorted(unknown)}; valid fields: {', '.join(sorted(valid))}"
        )
    try:
        return ModelConfig(rope_scaling=RopeScaling(**scaling), **d)
    except TypeError as e:  # a required field missing
        raise ConfigError(f"incomplete model config: {e}") from None
