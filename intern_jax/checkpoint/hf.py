"""Hugging Face safetensors checkpoints in the InternLM2 and Llama layouts, both directions.

config.json <-> ModelConfig, reading (sharded, indexed) safetensors with clear errors, and
writing shards + index + config + tokenizer. The tensor relayout itself lives in
layouts.py. Tensors are read one at a time into stacked host arrays of the target dtype;
this module does not place arrays on devices.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from intern_jax.checkpoint import layouts
from intern_jax.checkpoint.layouts import LAYOUTS
from intern_jax.config import ConfigError, ModelConfig, RopeScaling

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
INTERNLM2_TYPES = ("internlm2",)
LLAMA_TYPES = ("llama", "mistral")

# Fields of config.json that do not change the computation (or are checked elsewhere).
_IGNORED_FIELDS = {
    "_name_or_path",
    "architectures",
    "auto_map",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "attention_dropout",
    "pretraining_tp",
    "attn_implementation",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "tokenizer_class",
    "hidden_act",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "torchscript",
}


# ---------------------------------------------------------------------------
# config.json <-> ModelConfig


def _rope_from_hf(d: dict, where: str) -> tuple[float, RopeScaling]:
    """rope_theta and scaling from old (rope_scaling, rope_theta) or new (rope_parameters) keys."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    theta = d.get("rope_theta", params.get("rope_theta", 10000.0))
    merged = {**params, **scaling}
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind in ("default", "none", None):
        return float(theta), RopeScaling()
    if kind not in ("linear", "dynamic"):
        raise ConfigError(f"{where}: rope scaling type {kind!r} is not supported; supported: linear, dynamic")
    return float(theta), RopeScaling(kind, float(merged["factor"]))


def config_from_hf(d: dict, where: str = "config.json") -> tuple[ModelConfig, str]:
    """ModelConfig and layout (``internlm2`` | ``llama``) of a Hugging Face config dict."""
    model_type = d.get("model_type")
    archs = d.get("architectures") or []
    if model_type in INTERNLM2_TYPES or "InternLM2ForCausalLM" in archs:
        layout, bias_keys = "internlm2", ("bias",)
    elif model_type in LLAMA_TYPES:
        layout, bias_keys = "llama", ("attention_bias", "mlp_bias")
    else:
        raise ConfigError(
            f"{where}: model_type {model_type!r} (architectures {archs}) is not supported; "
            f"supported: {', '.join(INTERNLM2_TYPES + LLAMA_TYPES)}"
        )
    if "quantization_config" in d:
        raise ConfigError(
            f"{where}: quantized checkpoints ({d['quantization_config'].get('quant_method')}) "
            "are not supported; convert a full-precision checkpoint"
        )
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act {d['hidden_act']!r} is not supported; the model uses silu")
    mapped = {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "max_position_embeddings",
        "tie_word_embeddings",
        "initializer_range",
        *bias_keys,
    }
    unknown = set(d) - mapped - _IGNORED_FIELDS
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {sorted(unknown)} for a {layout} checkpoint; understood fields: "
            f"{', '.join(sorted(mapped | _IGNORED_FIELDS))}"
        )
    window = d.get("sliding_window")
    if window is not None and d.get("use_sliding_window", True) and window < d.get("max_position_embeddings", 0):
        raise ConfigError(f"{where}: sliding_window={window} attention is not supported")
    theta, scaling = _rope_from_hf(d, where)
    try:
        heads = d["num_attention_heads"]
        cfg = ModelConfig(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            intermediate_size=d["intermediate_size"],
            head_dim=d.get("head_dim") or 0,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("bias" if layout == "internlm2" else "attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            initializer_range=d.get("initializer_range", 0.02),
            name=str(d.get("_name_or_path", "")),
        )
    except KeyError as e:
        raise ConfigError(f"{where} has no {e.args[0]!r}; it is needed to build the model") from None
    return cfg, layout


def config_to_hf(cfg: ModelConfig, layout: str, dtype: str, tokenizer=None) -> dict:
    """config.json contents for ``layout``, readable by transformers (Llama) and InternLM2's code."""
    _check_layout(cfg, layout)
    scaling = cfg.rope_scaling
    ids = {
        "bos_token_id": getattr(tokenizer, "bos_id", None),
        "eos_token_id": getattr(tokenizer, "eos_id", None),
        "pad_token_id": getattr(tokenizer, "pad_id", None),
    }
    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "torch_dtype": dtype,
        **ids,
        **({"_name_or_path": cfg.name} if cfg.name else {}),
    }
    if layout == "internlm2":
        return {
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            **common,
            "bias": cfg.attention_bias,
            "rope_scaling": None if scaling.type == "none" else {"type": scaling.type, "factor": scaling.factor},
            "attn_implementation": "eager",
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **common,
        "head_dim": cfg.head_dim,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
        "rope_scaling": None if scaling.type == "none" else {"rope_type": scaling.type, "factor": scaling.factor},
    }


def _check_layout(cfg: ModelConfig, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not supported; use one of {LAYOUTS}")
    if layout == "internlm2":
        if cfg.mlp_bias:
            raise ValueError(
                "the InternLM2 layout has no feed-forward biases (mlp_bias=True); export with layout='llama' instead"
            )
        if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
            raise ValueError(
                f"the InternLM2 layout needs head_dim * num_heads == hidden_size, got "
                f"{cfg.head_dim} * {cfg.num_heads} != {cfg.hidden_size}; export with layout='llama'"
            )


# ---------------------------------------------------------------------------
# Reading


def is_hf_checkpoint(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (
        (directory / INDEX_FILE).is_file() or (directory / SINGLE_FILE).is_file()
    )


def read_config(directory: Path) -> tuple[ModelConfig, str]:
    path = directory / "config.json"
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    return config_from_hf(d, str(path))


class SafetensorsShards:
    """The tensors of a checkpoint directory, from its index json or a single model.safetensors."""

    def __init__(self, directory: Path):
        self.directory = directory
        index = directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index} is not a valid safetensors index ({e!r})") from None
            files = sorted(set(weight_map.values()))
            absent = [f for f in files if not (directory / f).is_file()]
            if absent:
                raise ValueError(
                    f"{index} lists shard(s) {absent} that are not in {directory}; the download is incomplete"
                )
        else:
            files = [SINGLE_FILE]
            weight_map = None
        self._handles = {f: self._open(directory / f) for f in files}
        self.location: dict[str, str] = {}
        for f, h in self._handles.items():
            for name in h.keys():
                self.location[name] = f
        if weight_map is not None:
            for name, f in weight_map.items():
                if self.location.get(name) != f:
                    raise ValueError(f"{index} says {name!r} is in {f}, but that shard does not hold it")

    @staticmethod
    def _open(path: Path):
        try:
            handle = safe_open(str(path), framework="numpy")
        except (SafetensorError, OSError) as e:
            raise ValueError(
                f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt: download it again"
            ) from None
        return handle

    def names(self) -> set[str]:
        return set(self.location)

    def get(self, name: str) -> np.ndarray:
        f = self.location[name]
        try:
            return self._handles[f].get_tensor(name)
        except SafetensorError as e:
            raise ValueError(f"cannot read {name!r} from {self.directory / f} ({e}); the file may be corrupt") from None


def load_hf(directory: Path, dtype=None, progress: bool = False) -> tuple[ModelConfig, dict]:
    """Config (``param_dtype`` = ``dtype`` or float32) and numpy params of an HF checkpoint directory."""
    cfg, layout = read_config(directory)
    dtype = np.dtype(dtype or cfg.param_dtype)
    cfg = dataclasses.replace(cfg, param_dtype=dtype.name)
    shards = SafetensorsShards(directory)
    params = layouts.params_from_tensors(shards.get, shards.names(), cfg, layout, dtype, str(directory), progress)
    return cfg, params


# ---------------------------------------------------------------------------
# Writing


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size {size!r} should be bytes or like '5GB', '500MB'")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * scale)


def save_hf(
    directory,
    config: ModelConfig,
    params,
    tokenizer=None,
    *,
    layout: str = "internlm2",
    max_shard_size: int | str = "5GB",
    progress: bool = False,
) -> Path:
    """Write ``params`` as a Hugging Face checkpoint: config.json, safetensors shards (+ index
    when more than one), generation_config.json and the tokenizer files. Returns the directory."""
    _check_layout(config, layout)
    layouts.check_params(params, config, "params to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(params_dtype(params))
    for old in [*directory.glob("model*.safetensors"), directory / INDEX_FILE]:
        old.unlink(missing_ok=True)
    files, total = _write_shards(directory, params, config, layout, _parse_size(max_shard_size), progress)
    if len(files) == 1:
        files[0][0].rename(directory / SINGLE_FILE)
    else:  # shard names carry the count, known only now
        weight_map = {}
        for k, (tmp, names) in enumerate(files, 1):
            final = f"model-{k:05d}-of-{len(files):05d}.safetensors"
            tmp.rename(directory / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    hf_config = config_to_hf(config, layout, dtype.name, tokenizer)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_config[k] is not None}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def _write_shards(directory: Path, params, config, layout, limit: int, progress: bool):
    """Write shards of at most ``limit`` bytes as they fill (one shard in memory at a time).

    Returns ``[(temporary path, tensor names)]`` and the total byte count.
    """
    files: list[tuple[Path, list[str]]] = []
    umask = os.umask(0)
    os.umask(umask)
    shard: dict[str, np.ndarray] = {}
    size = total = 0

    def flush():
        path = directory / f"model-{len(files) + 1:05d}.safetensors.partial"
        save_file(shard, str(path), metadata={"format": "pt"})
        path.chmod(0o666 & ~umask)  # safetensors creates files 0600; make them readable like the rest
        files.append((path, list(shard)))

    bar = layouts.progress_bar(len(layouts.expected_names(config, layout)), progress, f"writing {directory.name}")
    for name, tensor in layouts.tensors_from_params(params, config, layout):
        if shard and size + tensor.nbytes > limit:
            flush()
            shard, size = {}, 0
        shard[name] = tensor
        size += tensor.nbytes
        total += tensor.nbytes
        bar.update(1)
    bar.close()
    flush()
    return files, total


def params_dtype(params) -> str:
    """The one dtype all leaves share (mixed-dtype trees are rejected)."""
    import jax  # noqa: PLC0415

    dtypes = {np.dtype(x.dtype).name for x in jax.tree.leaves(params)}
    if len(dtypes) != 1:
        raise ValueError(f"params mix dtypes {sorted(dtypes)}; cast them to one dtype before saving")
    return dtypes.pop()
