"""GGUF import (llama.cpp's format): hyper-parameters, dequantized weights and the tokenizer.

Tensors are renamed to the Hugging Face Llama layout and go through layouts.py's table, so
GGUF adds only three things: the metadata -> ModelConfig mapping, dequantization (done by
the ``gguf`` package itself) and undoing llama.cpp's Q/K row permutation, which turns the
rotate-half RoPE order of HF weights into the interleaved order ggml's rope expects.
With ``keep_quantized`` the Q8_0 / Q4_0 / Q4_1 projections (and a quantized head) are not
expanded: their blocks' integer codes, scales and offsets are regrouped into the packed layout
of ``model.quantized`` (group 32; Q4_0 as codes with offset ``-8 * scale``), so the weights the
model multiplies are exactly the file's. Export to GGUF is not done here.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np

from intern_jax.checkpoint import layouts
from intern_jax.config import ConfigError, ModelConfig, RopeScaling
from intern_jax.model.quantized import PackedWeight
from intern_jax.tokenizer import Tokenizer

SUPPORTED_TYPE_NAMES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
ARCHITECTURES = ("llama",)

_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    **{
        f"attn_{g}.{kind}": f"self_attn.{h}_proj.{kind}"
        for g, h in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o"))
        for kind in ("weight", "bias")
    },
    **{
        f"ffn_{g}.{kind}": f"mlp.{h}_proj.{kind}"
        for g, h in (("gate", "gate"), ("up", "up"), ("down", "down"))
        for kind in ("weight", "bias")
    },
}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(.+)")


def _gguf():
    import gguf  # noqa: PLC0415

    return gguf


def open_reader(path: Path):
    gguf = _gguf()
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError / struct errors / numpy errors on bad files
        raise ValueError(f"{path} is not a readable GGUF file ({e}); it may be truncated or corrupt") from None


def supported_types() -> tuple:
    gguf = _gguf()
    return tuple(gguf.GGMLQuantizationType[n] for n in SUPPORTED_TYPE_NAMES)


def dequantize_tensor(tensor) -> np.ndarray:
    """One ``ReaderTensor`` as float32 in numpy order (GGUF lists dims innermost first)."""
    gguf = _gguf()
    kind = tensor.tensor_type
    if kind not in supported_types():
        raise ValueError(
            f"GGUF tensor {tensor.name!r} has type {kind.name}, which this loader does not read; "
            f"supported types: {', '.join(SUPPORTED_TYPE_NAMES)}. Re-quantize the model with one of them"
        )
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.asarray(gguf.quants.dequantize(tensor.data, kind), dtype=np.float32).reshape(shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation: per head, rows (i, pair) -> (pair, i).

    llama.cpp stores each head's rows as interleaved pairs (x0, x_{D/2}, x1, ...);
    rotate-half wants the two halves contiguous. Works for weights ``[rows, in]`` and biases.
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _TOP:
        return _TOP[gguf_name]
    m = _BLOCK_NAME.fullmatch(gguf_name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}"
    return None


def config_from_gguf(reader, source: str) -> ModelConfig:
    """ModelConfig from the ``{arch}.*`` metadata and the tensor list."""

    def meta(key, default=KeyError):
        field = reader.fields.get(key)
        if field is None:
            if default is KeyError:
                raise ConfigError(f"{source} has no metadata key {key!r}; it is needed to build the model")
            return default
        return field.contents()

    arch = meta("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"{source}: GGUF architecture {arch!r} is not supported; supported: {ARCHITECTURES}")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{source} has no tensor 'token_embd.weight'; is it a complete model file?")
    hidden = int(meta(f"{arch}.embedding_length"))
    heads = int(meta(f"{arch}.attention.head_count"))
    head_dim = int(meta(f"{arch}.attention.key_length", hidden // heads))
    rope_dim = int(meta(f"{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ConfigError(
            f"{source}: partial rotary embeddings (rope.dimension_count {rope_dim} < head dim "
            f"{head_dim}) are not supported"
        )
    kind = meta(f"{arch}.rope.scaling.type", "none")
    factor = float(meta(f"{arch}.rope.scaling.factor", meta(f"{arch}.rope.scale_linear", 1.0)))
    if kind == "none" and factor != 1.0:
        kind = "linear"  # older files carry only rope.scale_linear
    if kind not in ("none", "linear"):
        raise ConfigError(f"{source}: rope scaling {kind!r} is not supported; supported: none, linear")
    if "rope_freqs.weight" in tensors:
        raise ConfigError(
            f"{source} carries rope_freqs.weight (Llama-3.1-style frequency scaling), which is not supported"
        )
    return ModelConfig(
        vocab_size=int(tensors["token_embd.weight"].shape[1]),
        hidden_size=hidden,
        num_layers=int(meta(f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=int(meta(f"{arch}.attention.head_count_kv", heads)),
        intermediate_size=int(meta(f"{arch}.feed_forward_length")),
        head_dim=head_dim,
        rms_norm_eps=float(meta(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta(f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=RopeScaling(kind, factor) if kind != "none" else RopeScaling(),
        max_position_embeddings=int(meta(f"{arch}.context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        mlp_bias="blk.0.ffn_gate.bias" in tensors,
        name=str(meta("general.name", "")),
    )


KEEP_TYPE_NAMES = ("Q8_0", "Q4_0", "Q4_1")
GGUF_BLOCK = 32
# native leaf -> (its llama-layout tensors, how many axes of the native leaf are the product's input)
_PACKABLE = {
    "wqkv": (("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), 1),
    "wo": (("self_attn.o_proj.weight",), 2),
    "w1": (("mlp.gate_proj.weight",), 1),
    "w3": (("mlp.up_proj.weight",), 1),
    "w2": (("mlp.down_proj.weight",), 1),
}


def block_codes(tensor):
    """A Q8_0 / Q4_0 / Q4_1 tensor ``[rows, cols]`` as its integer codes ``[rows, cols]`` (int8, or uint8
    0..15), block scales and offsets ``[rows, cols // 32]`` (float16, offsets None for Q8_0), and the bits:
    ``w = codes * scale + offset`` is the file's value exactly as ``gguf`` dequantizes it."""
    kind = tensor.tensor_type.name
    rows = int(tensor.shape[-1]) if len(tensor.shape) > 1 else 1
    cols = int(tensor.shape[0])
    raw = np.asarray(tensor.data, np.uint8).reshape(rows, cols // GGUF_BLOCK, -1)
    d = np.ascontiguousarray(raw[..., :2]).view(np.float16)[..., 0]
    if kind == "Q8_0":
        return 8, np.ascontiguousarray(raw[..., 2:]).view(np.int8).reshape(rows, cols), d, None
    if kind == "Q4_0":
        offset, qs = (d.astype(np.float32) * -8).astype(np.float16), raw[..., 2:]
    elif kind == "Q4_1":
        offset, qs = np.ascontiguousarray(raw[..., 2:4]).view(np.float16)[..., 0], raw[..., 4:]
    else:
        raise ValueError(f"GGUF tensor {tensor.name!r} of type {kind} cannot be kept quantized; "
                         f"only {', '.join(KEEP_TYPE_NAMES)} can")
    codes = np.concatenate([qs & 0xF, qs >> 4], axis=-1)  # element j in byte j's low nibble, j + 16 in its high
    return 4, codes.reshape(rows, cols), d, offset


def _pack_rows(codes: np.ndarray) -> np.ndarray:
    """``[in, out]`` codes 0..15 -> ``[in // 2, out]`` bytes, row 2i low nibble (kernels' layout)."""
    return (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)


def _native_packed(cfg: ModelConfig, leaf: str, parts: list, n_in: int) -> PackedWeight | None:
    """One layer's native leaf from its tensors' ``block_codes`` (transposed to ``[in, out]``), or None
    when they are not all of one width."""
    if len({p[0] for p in parts}) != 1 or len({p[3] is None for p in parts}) != 1:
        return None
    bits = parts[0][0]
    arrays = []
    for k in (1, 2, 3):
        if parts[0][k] is None:
            arrays.append(None)
            continue
        if leaf == "wqkv":
            a = layouts._split_to_native(cfg, *(p[k] for p in parts))  # [in, K, G+2, D]
        else:
            a = parts[0][k].T
        arrays.append(np.ascontiguousarray(a.reshape(a.shape[0], -1)))
    codes, scales, mins = arrays
    if bits == 4:
        codes = _pack_rows(codes)
    shapes = {"wqkv": ((cfg.hidden_size,), (cfg.num_kv_heads, cfg.q_per_kv + 2, cfg.head_dim)),
              "wo": ((cfg.num_heads, cfg.head_dim), (cfg.hidden_size,)),
              "w1": ((cfg.hidden_size,), (cfg.intermediate_size,)),
              "w3": ((cfg.hidden_size,), (cfg.intermediate_size,)),
              "w2": ((cfg.intermediate_size,), (cfg.hidden_size,)),
              "output": ((cfg.hidden_size,), (cfg.vocab_size,))}
    in_shape, out_shape = shapes[leaf]
    return PackedWeight(codes, scales, mins, bits, GGUF_BLOCK, in_shape, out_shape, "float32")


def _stack(ws: list) -> PackedWeight:
    first = ws[0]
    stack = lambda f: None if getattr(first, f) is None else np.stack([getattr(w, f) for w in ws])  # noqa: E731
    return PackedWeight(stack("q"), stack("scales"), stack("mins"), first.bits, first.group_size, first.in_shape,
                        first.out_shape, first.dtype)


def packed_leaves(by_hf: dict, cfg: ModelConfig) -> tuple[dict, list[str]]:
    """The projections (and head) that can stay packed, as ``{path tuple: PackedWeight}`` (numpy), and
    notes on those that cannot (other block types, or widths mixed within one leaf)."""
    gguf = _gguf()
    keep = {gguf.GGMLQuantizationType[n] for n in KEEP_TYPE_NAMES}
    out, notes = {}, []
    for leaf, (names, n_in) in _PACKABLE.items():
        per_layer = []
        for i in range(cfg.num_layers):
            tensors = [by_hf[f"model.layers.{i}.{n}"] for n in names]
            if any(t.tensor_type not in keep for t in tensors):
                per_layer = None
                break
            parts = []
            for n, t in zip(names, tensors, strict=True):
                bits, codes, d, m = block_codes(t)
                if n.startswith("self_attn.q_proj"):
                    codes, d, m = (None if a is None else unpermute_rows(a, cfg.num_heads) for a in (codes, d, m))
                elif n.startswith("self_attn.k_proj"):
                    codes, d, m = (None if a is None else unpermute_rows(a, cfg.num_kv_heads) for a in (codes, d, m))
                parts.append((bits, codes, d, m))
            w = _native_packed(cfg, leaf, parts, n_in)
            if w is None:
                per_layer = None
                break
            per_layer.append(w)
        if per_layer is None:
            notes.append(f"layers/{leaf} is expanded to floats (not all of one {'/'.join(KEEP_TYPE_NAMES)} type)")
        else:
            out[("layers", leaf)] = _stack(per_layer)
    head = by_hf.get("lm_head.weight", by_hf["model.embed_tokens.weight"])
    if head.tensor_type in keep:
        bits, codes, d, m = block_codes(head)  # [V, E]
        out[("output",)] = _native_packed(cfg, "output", [(bits, codes, d, m)], 1)
    else:
        notes.append(f"the output head stays in floats ({head.tensor_type.name})")
    return out, notes


def load_gguf(path: Path, dtype=None, progress: bool = False, keep_quantized: bool = False):
    """``(config, numpy params, tokenizer or None)`` of a GGUF file, dequantized to ``dtype``; with
    ``keep_quantized`` its Q8_0 / Q4_0 / Q4_1 projections and head stay packed (a tied head then
    becomes an untied packed ``output``, and the config says so)."""
    reader = open_reader(path)
    source = str(path)
    cfg = config_from_gguf(reader, source)
    dtype = np.dtype(dtype or cfg.param_dtype)
    cfg = dataclasses.replace(cfg, param_dtype=dtype.name)

    by_hf = {}
    unknown = []
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            unknown.append(t.name)
        else:
            by_hf[name] = t
    if unknown:
        raise ValueError(
            f"{source} holds tensor(s) this loader does not understand: {unknown[:5]}; "
            "nothing is skipped silently, so the file cannot be loaded"
        )
    bad = [t for t in by_hf.values() if t.tensor_type not in supported_types()]
    if bad:
        dequantize_tensor(bad[0])  # raises, naming the tensor and its type

    def get(name: str) -> np.ndarray:
        w = dequantize_tensor(by_hf[name])
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            w = unpermute_rows(w, cfg.num_heads)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            w = unpermute_rows(w, cfg.num_kv_heads)
        return w

    packed, skip = {}, frozenset()
    if keep_quantized:
        packed, notes = packed_leaves(by_hf, cfg)
        for note in notes:
            warnings.warn(f"{source}: {note}", stacklevel=2)
        skip = frozenset(packed)
        packed = {p: dataclasses.replace(w, dtype=dtype.name) for p, w in packed.items()}
    params = layouts.params_from_tensors(get, set(by_hf), cfg, "llama", dtype, source, progress, skip=skip)
    for path, w in packed.items():
        if path == ("output",):
            params["output"] = w
            cfg = dataclasses.replace(cfg, tie_word_embeddings=False)
        else:
            params["layers"][path[1]] = w
    tokenizer = None
    if "tokenizer.ggml.tokens" in reader.fields:
        tokenizer = Tokenizer.from_gguf(reader)
    return cfg, params, tokenizer
