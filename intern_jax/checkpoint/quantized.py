"""Native checkpoints whose projections are packed 4- / 8-bit weights (``model.quantized.PackedWeight``).

The native layout (``model_config.json``, orbax ``params/``, tokenizer files) plus
``quantization.json``: bits, group size, method, and per packed leaf its input / output split and
array shapes. In ``params/`` a packed leaf is the plain dict ``{"q", "scales"[, "mins"]}``, so the
orbax tree holds only arrays. ``load_model`` reads such a directory back with the weights still
packed (``load_quantized``); nothing here chooses scales or runs the model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from intern_jax.checkpoint import native
from intern_jax.config import ModelConfig, to_dict
from intern_jax.model import internlm2
from intern_jax.model.quantized import PackedWeight, is_packed

QUANT_FILE = "quantization.json"
FORMAT_VERSION = 1
_FIELDS = ("q", "scales", "mins")


def is_quantized_checkpoint(directory) -> bool:
    return (Path(directory) / QUANT_FILE).is_file() and native.is_native_checkpoint(Path(directory))


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _set(tree: dict, path: str, value) -> None:
    keys = path.split("/")
    for k in keys[:-1]:
        tree = tree[k]
    tree[keys[-1]] = value


def save_quantized(directory, config: ModelConfig, params, tokenizer=None, *, method: str = "rtn",
                   extra: dict | None = None) -> Path:
    """Write packed ``params`` (from ``quantized.quantize_params``) as a native quantized checkpoint."""
    directory = Path(directory).absolute()
    if (directory / native.PARAMS_DIR).exists():
        raise FileExistsError(f"{directory / native.PARAMS_DIR} already exists; choose an empty output directory")
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_packed)
    packed = {_path_str(p): w for p, w in flat if is_packed(w)}
    if not packed:
        raise ValueError("params hold no packed weight; quantize them first (model.quantized.quantize_params)")
    dense = {jnp.dtype(w.dtype).name for p, w in flat if not is_packed(w)}
    if len(dense) != 1:
        raise ValueError(f"the full-precision params mix dtypes {sorted(dense)}; cast them to one dtype first")
    config = dataclasses.replace(config, param_dtype=dense.pop())
    tree = jax.tree.map(lambda x: x, params, is_leaf=is_packed)  # a copy of the dict structure
    tree = _copy_dicts(tree)
    weights = {}
    for path, w in packed.items():
        arrays = {f: getattr(w, f) for f in _FIELDS if getattr(w, f) is not None}
        _set(tree, path, arrays)
        weights[path] = {"bits": w.bits, "group_size": w.group_size, "in_shape": list(w.in_shape),
                         "out_shape": list(w.out_shape),
                         "arrays": {f: [list(a.shape), jnp.dtype(a.dtype).name] for f, a in arrays.items()}}
    first = next(iter(packed.values()))
    meta = {"format": FORMAT_VERSION, "method": method, "bits": first.bits, "group_size": first.group_size,
            "weights": weights, **(extra or {})}
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = native._checkpointer()
    checkpointer.save(directory / native.PARAMS_DIR, tree)
    checkpointer.wait_until_finished()
    (directory / native.CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2) + "\n")
    (directory / QUANT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def _copy_dicts(tree):
    return {k: _copy_dicts(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def read_quantization(directory) -> dict:
    path = Path(directory) / QUANT_FILE
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT_VERSION or not isinstance(meta.get("weights"), dict):
        raise ValueError(f"{path}: unknown quantization format {meta.get('format')!r} (this version reads "
                         f"{FORMAT_VERSION}); write the checkpoint again with scripts/quantize.py")
    return meta


def load_quantized(directory, *, dtype=None, mesh=None):
    """``(config, params)`` of a quantized native checkpoint, the projections kept packed on one device.

    ``dtype`` casts the full-precision leaves (norms, embeddings) and sets the compute dtype.
    """
    directory = Path(directory).absolute()
    if mesh is not None:
        raise ValueError(f"{directory} holds packed quantized weights, which load onto one device only; "
                         "drop the mesh (or tensor parallelism) for this checkpoint")
    cfg = native.read_config(directory)
    meta = read_quantization(directory)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    spec = lambda shape, dt: jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dt), sharding=device)  # noqa: E731
    target = _copy_dicts(jax.tree.map(lambda a: spec(a.shape, a.dtype), internlm2.abstract(cfg)))
    for path, w in meta["weights"].items():
        try:
            _set(target, path, {f: spec(*a) for f, a in w["arrays"].items()})
        except (KeyError, TypeError):
            raise ValueError(f"{directory / QUANT_FILE} names a packed weight {path!r} the config has no "
                             "place for; the checkpoint is damaged") from None
    checkpointer = native._checkpointer()
    native._check_stored(checkpointer, directory, target)
    try:
        tree = checkpointer.restore(directory / native.PARAMS_DIR, target)
    except Exception as e:  # noqa: BLE001  (tensorstore and orbax report damaged files with many types)
        raise ValueError(f"{directory / native.PARAMS_DIR} cannot be read ({native.damage_reason(e)}); the "
                         "checkpoint is damaged or incomplete: write it again") from e
    name = jnp.dtype(dtype or cfg.param_dtype).name
    if name != jnp.dtype(cfg.param_dtype).name:
        cfg = dataclasses.replace(cfg, param_dtype=name)
    for path, w in meta["weights"].items():
        keys = path.split("/")
        node = tree
        for k in keys:
            node = node[k]
        _set(tree, path, PackedWeight(node["q"], node["scales"], node.get("mins"), int(w["bits"]),
                                      int(w["group_size"]), tuple(w["in_shape"]), tuple(w["out_shape"]),
                                      jnp.dtype(cfg.param_dtype).name))
    # the full-precision leaves in the asked dtype; packed codes, scales and offsets stay as stored
    tree = jax.tree.map(lambda x: x if is_packed(x) or x.dtype == name else x.astype(name), tree, is_leaf=is_packed)
    return cfg, tree


# ---------------------------------------------------------------------------
# Quantizing a checkpoint (scripts/quantize.py)

METHODS = ("rtn", "awq")
# Built-in text with nothing downloaded: docstrings of standard-library modules, in two disjoint sets
# (calibration, and held-out text for measuring perplexity).
CALIBRATION_MODULES = ("argparse", "collections", "json", "pathlib", "subprocess", "threading", "logging", "re",
                       "itertools", "functools", "dataclasses", "typing", "os", "inspect")
HELDOUT_MODULES = ("asyncio", "email.message", "http.client", "unittest", "csv", "datetime", "decimal",
                   "fractions", "heapq", "shutil", "tarfile", "zipfile", "statistics", "textwrap")


def builtin_text(split: str = "calibration") -> str:
    """Docstrings (module, then its public classes and functions) of the split's standard-library modules."""
    import importlib  # noqa: PLC0415
    import inspect  # noqa: PLC0415

    modules = {"calibration": CALIBRATION_MODULES, "heldout": HELDOUT_MODULES}.get(split)
    if modules is None:
        raise ValueError(f"builtin text split must be 'calibration' or 'heldout', got {split!r}")
    parts = []
    for name in modules:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                doc = inspect.getdoc(obj)
                if doc:
                    parts.append(f"{attr}: {doc}")
    return "\n\n".join(p for p in parts if p)


def token_windows(tokenizer, text: str, samples: int, seq_len: int):
    """Up to ``samples`` consecutive windows ``[n, seq_len]`` of ``text``'s tokens (int32 numpy)."""
    import numpy as np  # noqa: PLC0415

    if samples < 1 or seq_len < 2:
        raise ValueError(f"calibration needs samples >= 1 and seq_len >= 2, got {samples} and {seq_len}")
    ids = np.asarray(tokenizer.encode(text), np.int32)
    n = min(samples, len(ids) // seq_len)
    if n < 1:
        raise ValueError(f"the calibration text has {len(ids)} tokens, fewer than one window of {seq_len}; "
                         "give a longer text or a shorter --calib-seq-len")
    return ids[: n * seq_len].reshape(n, seq_len)


def quantize_model(model, *, method: str, bits: int, group_size: int, calib_text: str | None = None,
                   calib_samples: int = 32, calib_seq_len: int = 256, head: bool = False, batch_size: int = 8,
                   awq_wo: bool = False):
    """``(LoadedModel with packed params, report dict)`` for a loaded float model (``load_model``)."""
    from intern_jax.checkpoint.loaded import LoadedModel  # noqa: PLC0415
    from intern_jax.model import awq  # noqa: PLC0415
    from intern_jax.model import quantized as q  # noqa: PLC0415

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cfg, params = model.config, model.params
    q.check_params(params, cfg, bits, group_size, head=head)
    report = {"method": method, "bits": bits, "group_size": group_size, "head": head,
              "param_bytes_before": q.param_bytes(params)}
    if method == "rtn":
        packed, cfg = q.quantize_params(params, cfg, bits, group_size, head=head)
    else:
        if model.tokenizer is None:
            raise ValueError("--method awq needs the model's tokenizer to read its calibration text; this checkpoint "
                             "carries none (use --method rtn, or a checkpoint with tokenizer files)")
        windows = token_windows(model.tokenizer, calib_text if calib_text is not None else builtin_text(),
                                calib_samples, calib_seq_len)
        batches = [windows[i: i + batch_size] for i in range(0, len(windows), batch_size)]
        packed, cfg, awq_report = awq.quantize_awq(params, cfg, batches, bits, group_size, head=head, scale_wo=awq_wo)
        report.update(calib_windows=len(windows), calib_seq_len=calib_seq_len, awq_wo=awq_wo,
                      awq_error_vs_rtn=awq_report)
    report["param_bytes_after"] = q.param_bytes(packed)
    return LoadedModel(cfg, packed, model.tokenizer), report
