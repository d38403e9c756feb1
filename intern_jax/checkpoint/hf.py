"""Hugging Face safetensors checkpoints in the InternLM2 and Llama layouts, both directions.

One table per layout says, for every native leaf, which HF tensors hold it and how to
turn them into the leaf and back; import and export both read that table, so the two
directions cannot drift apart. HF Linear weights are ``[out, in]``; native ones are
``[in, ...out]``. Both HF layouts use rotate-half RoPE on the stored weight order, as the
model does, so no row permutation happens here (GGUF's interleaved order is undone in
gguf.py). Tensors are read one at a time and written into stacked host arrays of the
target dtype; this module does not place arrays on devices.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from intern_jax.config import ConfigError, ModelConfig, RopeScaling

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
INTERNLM2_TYPES = ("internlm2",)
LLAMA_TYPES = ("llama", "mistral")
LAYOUTS = ("internlm2", "llama")

# Fields of config.json that do not change the computation (or are checked elsewhere).
_IGNORED_FIELDS = {
    "_name_or_path", "architectures", "auto_map", "model_type", "transformers_version", "torch_dtype", "dtype",
    "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout", "pretraining_tp",
    "attn_implementation", "return_dict", "output_attentions", "output_hidden_states", "tokenizer_class",
    "hidden_act", "sliding_window", "use_sliding_window", "max_window_layers", "torchscript",
}


# ---------------------------------------------------------------------------
# config.json <-> ModelConfig


def _rope_from_hf(d: dict, where: str) -> tuple[float, RopeScaling]:
    """rope_theta and scaling from old (``rope_scaling`` + ``rope_theta``) or new (``rope_parameters``) keys."""
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
        raise ConfigError(f"{where}: quantized checkpoints ({d['quantization_config'].get('quant_method')}) "
                          "are not supported; convert a full-precision checkpoint")
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act {d['hidden_act']!r} is not supported; the model uses silu")
    mapped = {
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
        "max_position_embeddings", "tie_word_embeddings", "initializer_range", *bias_keys,
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
            raise ValueError("the InternLM2 layout has no feed-forward biases (mlp_bias=True); "
                             "export with layout='llama' instead")
        if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
            raise ValueError(f"the InternLM2 layout needs head_dim * num_heads == hidden_size, got "
                             f"{cfg.head_dim} * {cfg.num_heads} != {cfg.hidden_size}; export with layout='llama'")


# ---------------------------------------------------------------------------
# The layout tables: native leaf <-> HF tensors


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one native leaf (one layer's slice for ``layers/*``) maps to HF tensors.

    ``names`` use ``{i}`` for the layer index; ``to_native(cfg, *tensors) -> leaf`` and
    ``from_native(cfg, leaf) -> tuple of tensors`` (same order as ``names``).
    """

    names: tuple[str, ...]
    to_native: Callable
    from_native: Callable


def _t(cfg, w):  # HF [out, in] <-> native [in, out]
    return w.T


def _one(f):
    return lambda cfg, leaf: (f(cfg, leaf),)


def _ident(cfg, w):
    return w


def _wo_to_native(cfg, w):  # [E, H*D] -> [H, D, E]
    return w.T.reshape(cfg.num_heads, cfg.head_dim, w.shape[0])


def _wo_from_native(cfg, leaf):
    return leaf.reshape(-1, leaf.shape[-1]).T


def _packed_to_native(cfg, w):  # InternLM2 wqkv [K*(G+2)*D, E] -> [E, K, G+2, D]
    return w.reshape(cfg.num_kv_heads, cfg.q_per_kv + 2, cfg.head_dim, -1).transpose(3, 0, 1, 2)


def _packed_from_native(cfg, leaf):
    return leaf.transpose(1, 2, 3, 0).reshape(-1, leaf.shape[0])


def _packed_bias_to_native(cfg, b):
    return b.reshape(cfg.num_kv_heads, cfg.q_per_kv + 2, cfg.head_dim)


def _split_to_native(cfg, q, k, v):
    """q [H*D, in], k/v [K*D, in] -> [in, K, G+2, D] (query head h = k*G + g)."""
    K, G, D = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim
    rest = q.shape[1:]
    q = q.reshape(K, G, D, *rest)
    k = k.reshape(K, 1, D, *rest)
    v = v.reshape(K, 1, D, *rest)
    packed = np.concatenate([q, k, v], axis=1)  # [K, G+2, D, *in]
    return np.moveaxis(packed, (0, 1, 2), (-3, -2, -1)) if rest else packed


def _split_from_native(cfg, leaf):
    G = cfg.q_per_kv
    lead = leaf.ndim - 3  # 1 for weights [E, K, G+2, D], 0 for biases [K, G+2, D]
    packed = np.moveaxis(leaf, (-3, -2, -1), (0, 1, 2)) if lead else leaf  # [K, G+2, D, *in]
    rest = packed.shape[3:]
    q = packed[:, :G].reshape(-1, *rest)
    k = packed[:, G].reshape(-1, *rest)
    v = packed[:, G + 1].reshape(-1, *rest)
    return q, k, v


def _linear(name: str) -> Rule:
    return Rule((name,), _t, _one(_t))


def _plain(name: str) -> Rule:
    return Rule((name,), _ident, _one(_ident))


def layout_rules(layout: str) -> dict[tuple[str, ...], Rule]:
    """Native leaf path -> Rule, for every leaf any config can have."""
    if layout == "internlm2":
        p = "model.layers.{i}."
        return {
            ("tok_embeddings",): _plain("model.tok_embeddings.weight"),
            ("norm",): _plain("model.norm.weight"),
            ("output",): _linear("output.weight"),
            ("layers", "attention_norm"): _plain(p + "attention_norm.weight"),
            ("layers", "ffn_norm"): _plain(p + "ffn_norm.weight"),
            ("layers", "wqkv"): Rule((p + "attention.wqkv.weight",), _packed_to_native, _one(_packed_from_native)),
            ("layers", "wqkv_bias"): Rule((p + "attention.wqkv.bias",), _packed_bias_to_native,
                                          _one(lambda cfg, b: b.reshape(-1))),
            ("layers", "wo"): Rule((p + "attention.wo.weight",), _wo_to_native, _one(_wo_from_native)),
            ("layers", "wo_bias"): _plain(p + "attention.wo.bias"),
            ("layers", "w1"): _linear(p + "feed_forward.w1.weight"),
            ("layers", "w3"): _linear(p + "feed_forward.w3.weight"),
            ("layers", "w2"): _linear(p + "feed_forward.w2.weight"),
        }
    if layout == "llama":
        p = "model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        return {
            ("tok_embeddings",): _plain("model.embed_tokens.weight"),
            ("norm",): _plain("model.norm.weight"),
            ("output",): _linear("lm_head.weight"),
            ("layers", "attention_norm"): _plain(p + "input_layernorm.weight"),
            ("layers", "ffn_norm"): _plain(p + "post_attention_layernorm.weight"),
            ("layers", "wqkv"): Rule(
                tuple(a + f"{x}_proj.weight" for x in "qkv"),
                lambda cfg, q, k, v: _split_to_native(cfg, q, k, v), _split_from_native),
            ("layers", "wqkv_bias"): Rule(
                tuple(a + f"{x}_proj.bias" for x in "qkv"),
                lambda cfg, q, k, v: _split_to_native(cfg, q, k, v), _split_from_native),
            ("layers", "wo"): Rule((a + "o_proj.weight",), _wo_to_native, _one(_wo_from_native)),
            ("layers", "wo_bias"): _plain(a + "o_proj.bias"),
            ("layers", "w1"): _linear(m + "gate_proj.weight"),
            ("layers", "w3"): _linear(m + "up_proj.weight"),
            ("layers", "w2"): _linear(m + "down_proj.weight"),
            ("layers", "w1_bias"): _plain(m + "gate_proj.bias"),
            ("layers", "w3_bias"): _plain(m + "up_proj.bias"),
            ("layers", "w2_bias"): _plain(m + "down_proj.bias"),
        }
    raise ValueError(f"layout {layout!r} is not supported; use one of {LAYOUTS}")


# Tensors a checkpoint may carry that hold nothing the model needs.
_REDUNDANT = re.compile(r".*\.rotary_emb\.inv_freq$")


def _native_leaves(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    from intern_jax.model import internlm2  # noqa: PLC0415

    flat = {}
    for path, leaf in internlm2.abstract(cfg).items():
        if isinstance(leaf, dict):
            flat.update({(path, k): v.shape for k, v in leaf.items()})
        else:
            flat[(path,)] = leaf.shape
    return flat


def expected_names(cfg: ModelConfig, layout: str) -> list[str]:
    rules = layout_rules(layout)
    out = []
    for path in _native_leaves(cfg):
        for name in rules[path].names:
            out.extend(name.format(i=i) for i in range(cfg.num_layers)) if path[0] == "layers" else out.append(name)
    return out


def params_from_tensors(
    get: Callable[[str], np.ndarray], names: set[str], cfg: ModelConfig, layout: str, dtype,
    source: str, progress: bool = False,
) -> dict:
    """The native params tree (numpy, ``dtype``) from HF-named tensors.

    ``get(name)`` returns one tensor as stored; ``names`` is everything the source holds.
    Missing tensors, tensors of the wrong shape and tensors nothing uses are errors.
    """
    rules = layout_rules(layout)
    leaves = _native_leaves(cfg)
    wanted = expected_names(cfg, layout)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(
            f"{source} has no tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1
                                                      else "")
            + f"; is this a {layout} checkpoint matching its config.json?"
        )
    extra = sorted(set(names) - set(wanted))
    if cfg.tie_word_embeddings:  # a tied head stored anyway is the embedding itself
        extra = [n for n in extra if n not in rules[("output",)].names]
    extra = [n for n in extra if not _REDUNDANT.match(n)]
    if extra:
        raise ValueError(
            f"{source} holds tensor(s) the {layout} config does not use: {extra[:5]}"
            + (f" (and {len(extra) - 5} more)" if len(extra) > 5 else "")
            + "; check attention_bias / mlp_bias / tie_word_embeddings in config.json"
        )
    dtype = np.dtype(dtype)
    jobs = [(path, i) for path in leaves for i in (range(cfg.num_layers) if path[0] == "layers" else [None])]
    bar = _progress(len(jobs), progress, f"converting {Path(source).name}")
    out: dict = {"layers": {}}
    for path, i in jobs:
        rule = rules[path]
        hf_names = [n.format(i=i) for n in rule.names]
        tensors = [np.asarray(get(n), dtype=np.float32) for n in hf_names]
        shape = leaves[path] if i is None else leaves[path][1:]
        try:
            value = rule.to_native(cfg, *tensors)
        except ValueError:
            value = None
        if value is None or value.shape != shape:
            got = ", ".join(f"{n} {list(t.shape)}" for n, t in zip(hf_names, tensors))
            raise ValueError(f"{source}: {got} do not fit native '{'/'.join(path)}' of shape {list(shape)} "
                             "for this config")
        if i is None:
            out[path[0]] = value.astype(dtype)
        else:
            target = out["layers"].get(path[1])
            if target is None:
                target = out["layers"][path[1]] = np.empty(leaves[path], dtype)
            target[i] = value
        bar.update(1)
    bar.close()
    return out


def tensors_from_params(params, cfg: ModelConfig, layout: str) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, tensor) pairs of ``params`` in ``layout``, in native dtype."""
    _check_layout(cfg, layout)
    rules = layout_rules(layout)
    for path in _native_leaves(cfg):
        rule = rules[path]
        leaf = np.asarray(params[path[0]] if len(path) == 1 else params["layers"][path[1]])  # one host copy
        for i in range(cfg.num_layers) if path[0] == "layers" else [None]:
            value = leaf if i is None else leaf[i]
            for name, t in zip(rule.names, rule.from_native(cfg, value)):
                yield name.format(i=i), np.ascontiguousarray(t)


def _progress(total: int, enabled: bool, desc: str):
    if enabled:
        from tqdm.auto import tqdm  # noqa: PLC0415

        return tqdm(total=total, desc=desc, unit="tensor")

    class _Silent:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Silent()


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
                raise ValueError(f"{index} lists shard(s) {absent} that are not in {directory}; "
                                 "the download is incomplete")
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
            raise ValueError(f"{path} is not a readable safetensors file ({e}); it may be truncated or "
                             "corrupt: download it again") from None
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
    cfg = dataclasses.replace(cfg, param_dtype=dtype.name, dtype=dtype.name)
    shards = SafetensorsShards(directory)
    params = params_from_tensors(shards.get, shards.names(), cfg, layout, dtype, str(directory), progress)
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


def save_hf(directory, config: ModelConfig, params, tokenizer=None, *, layout: str = "internlm2",
            max_shard_size: int | str = "5GB", progress: bool = False) -> Path:
    """Write ``params`` as a Hugging Face checkpoint: config.json, safetensors shards (+ index
    when more than one), generation_config.json and the tokenizer files. Returns the directory."""
    _check_layout(config, layout)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    limit = _parse_size(max_shard_size)
    dtype = np.dtype(params_dtype(params))
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    total = 0
    names = expected_names(config, layout)
    bar = _progress(len(names), progress, f"writing {directory.name}")
    for name, tensor in tensors_from_params(params, config, layout):
        if size + tensor.nbytes > limit and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
        total += tensor.nbytes
        bar.update(1)
    bar.close()
    for old in list(directory.glob("model*.safetensors")) + [directory / INDEX_FILE]:
        old.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_FILE), metadata={"format": "pt"})
    else:
        n = len(shards)
        weight_map = {}
        for k, shard in enumerate(shards, 1):
            fname = f"model-{k:05d}-of-{n:05d}.safetensors"
            save_file(shard, str(directory / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    hf_config = config_to_hf(config, layout, dtype.name, tokenizer)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_config[k] is not None}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def params_dtype(params) -> str:
    """The one dtype all leaves share (mixed-dtype trees are rejected)."""
    import jax  # noqa: PLC0415

    dtypes = {np.dtype(x.dtype).name for x in jax.tree.leaves(params)}
    if len(dtypes) != 1:
        raise ValueError(f"params mix dtypes {sorted(dtypes)}; cast them to one dtype before saving")
    return dtypes.pop()
