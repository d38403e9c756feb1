"""The project's own model checkpoint: an orbax params tree, its ModelConfig and tokenizer files.

Layout of a native directory::

    model_config.json     ModelConfig as a dict (param_dtype = the stored dtype)
    params/               orbax StandardCheckpointer tree (sharded arrays are written in place)
    tokenizer.json ...    whatever Tokenizer.save writes (optional)

Restoring takes the target shardings from the model's specs, so a checkpoint saved on
one mesh restores onto any other. Training state (optimizer, step, data iterator) is
train/'s business; this is the format load_model and scripts/convert.py exchange.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from intern_jax.checkpoint import layouts
from intern_jax.config import ConfigError, ModelConfig, model_config_from_dict, to_dict
from intern_jax.model import internlm2

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def is_native_checkpoint(directory: Path) -> bool:
    return (directory / CONFIG_FILE).is_file() and (directory / PARAMS_DIR).is_dir()


def _checkpointer():
    import orbax.checkpoint as ocp  # noqa: PLC0415  (heavy import, only needed here)

    return ocp.StandardCheckpointer()


def save_native(directory, config: ModelConfig, params, tokenizer=None) -> Path:
    """Write ``params`` (any sharding), ``config`` and the tokenizer under ``directory``."""
    directory = Path(directory).absolute()
    dtypes = {jnp.dtype(x.dtype).name for x in jax.tree.leaves(params)}
    if len(dtypes) != 1:
        raise ValueError(f"params mix dtypes {sorted(dtypes)}; cast them to one dtype before saving")
    config = dataclasses.replace(config, param_dtype=dtypes.pop())
    layouts.check_params(params, config, "params to save")
    if (directory / PARAMS_DIR).exists():
        raise FileExistsError(f"{directory / PARAMS_DIR} already exists; choose an empty output directory")
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = _checkpointer()
    checkpointer.save(directory / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    (directory / CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def read_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_FILE
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    try:
        return model_config_from_dict(d)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from None


def load_native(directory, dtype=None, mesh=None) -> tuple[ModelConfig, dict]:
    """Config and params of a native checkpoint, cast to ``dtype`` (default: as stored) and
    placed with the model's shardings on ``mesh`` (default: the first device)."""
    directory = Path(directory).absolute()
    cfg = read_config(directory)
    stored = internlm2.abstract(cfg)
    if mesh is not None:
        shardings = internlm2.param_shardings(cfg, mesh)
    else:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), stored)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), stored, shardings)
    checkpointer = _checkpointer()
    _check_stored(checkpointer, directory, stored)
    try:
        params = checkpointer.restore(directory / PARAMS_DIR, target)
    except Exception as e:  # noqa: BLE001  (tensorstore and orbax report damaged files with many types)
        raise ValueError(f"{directory / PARAMS_DIR} cannot be read ({damage_reason(e)}); the checkpoint is damaged "
                         "or incomplete: write or convert it again") from e
    if dtype is not None and jnp.dtype(dtype) != jnp.dtype(cfg.param_dtype):
        name = jnp.dtype(dtype).name
        params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(name), p), out_shardings=shardings)(params)
        cfg = dataclasses.replace(cfg, param_dtype=name)
    return cfg, params


def damage_reason(error: BaseException) -> str:
    """The first line of the innermost cause of a failed read (tensorstore wraps it in several layers)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _check_stored(checkpointer, directory: Path, want) -> None:
    """Compare the stored tree's shapes and dtypes with the config before reading any data."""
    try:
        meta = checkpointer.metadata(directory / PARAMS_DIR).item_metadata.tree
    except (ValueError, KeyError, FileNotFoundError, AttributeError) as e:
        raise ValueError(f"{directory / PARAMS_DIR} is not a readable orbax params tree ({e})") from None
    describe = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype).name), tree)
    stored, expected = describe(meta), describe(want)
    if stored != expected:
        flat_s = dict(jax.tree_util.tree_flatten_with_path(stored, is_leaf=lambda x: isinstance(x, tuple))[0])
        flat_e = dict(jax.tree_util.tree_flatten_with_path(expected, is_leaf=lambda x: isinstance(x, tuple))[0])
        diff = [
            f"{jax.tree_util.keystr(k)}: stored {flat_s.get(k)}, config wants {flat_e.get(k)}"
            for k in sorted(set(flat_s) | set(flat_e), key=str)
            if flat_s.get(k) != flat_e.get(k)
        ]
        raise ValueError(
            f"{directory / PARAMS_DIR} does not hold the params {directory / CONFIG_FILE} describes: "
            + "; ".join(diff[:4])
        )
