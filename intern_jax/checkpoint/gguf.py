"""GGUF import (llama.cpp's format): hyper-parameters, dequantized weights and the tokenizer.

Tensors are renamed to the Hugging Face Llama layout and go through layouts.py's table, so
GGUF adds only three things: the metadata -> ModelConfig mapping, dequantization (done by
the ``gguf`` package itself) and undoing llama.cpp's Q/K row permutation, which turns the
rotate-half RoPE order of HF weights into the interleaved order ggml's rope expects.
Export to GGUF is not done here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from intern_jax.checkpoint import layouts
from intern_jax.config import ConfigError, ModelConfig, RopeScaling
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


def load_gguf(path: Path, dtype=None, progress: bool = False):
    """``(config, numpy params, tokenizer or None)`` of a GGUF file, dequantized to ``dtype``."""
    reader = open_reader(path)
    source = str(path)
    cfg = config_from_gguf(reader, source)
    dtype = np.dtype(dtype or cfg.param_dtype)
    cfg = dataclasses.replace(cfg, param_dtype=dtype.name, dtype=dtype.name)

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

    params = layouts.params_from_tensors(get, set(by_hf), cfg, "llama", dtype, source, progress)
    tokenizer = None
    if "tokenizer.ggml.tokens" in reader.fields:
        tokenizer = Tokenizer.from_gguf(reader)
    return cfg, params, tokenizer
