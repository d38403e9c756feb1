"""InternLM2 / InternLM2.5 (and Llama-family, converted) as pure functions over a params pytree.

Every leaf is declared once in ``param_specs`` with shape, initializer and logical
axes; ``init`` is jitted with output shardings so large models are created already
sharded. Blocks are stacked on a leading ``layers`` axis and run under ``lax.scan``.
The layout is InternLM2's own (packed ``wqkv``); checkpoint/ converts other layouts.
This module does not sample, batch requests or know file formats.

Params tree (``L`` layers, ``E`` hidden, ``K`` kv heads, ``G`` query heads per kv head,
``D`` head dim, ``M`` intermediate, ``V`` vocab)::

    tok_embeddings [V, E]
    layers/attention_norm [L, E]      layers/ffn_norm [L, E]
    layers/wqkv [L, E, K, G + 2, D]   (per kv head: its G query heads, then key, then value)
    layers/wo   [L, K * G, D, E]      (query head h = k * G + g)
    layers/w1, w3 [L, E, M]           layers/w2 [L, M, E]
    norm [E]                          output [E, V] (absent when tied)
    optional biases: layers/wqkv_bias [L, K, G + 2, D], layers/wo_bias [L, E],
                     layers/w1_bias, w3_bias [L, M], layers/w2_bias [L, E]
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp

from intern_jax import sharding as shd
from intern_jax.config import Execution, ModelConfig
from intern_jax.model import kv_cache, layers, remat

DEFAULT_EXECUTION = Execution()

# logical axes of the hidden states [B, T, E] between layers: the embedding dimension is whole on
# every device (FSDP shards the weights' ``embed`` axis, not the activations')
ACTIVATION_AXES = ("batch", "seq", None)


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: str = "normal"  # normal | ones | zeros


def param_specs(cfg: ModelConfig) -> dict:
    L, E, K, G, D = cfg.num_layers, cfg.hidden_size, cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim
    M, V, H = cfg.intermediate_size, cfg.vocab_size, cfg.num_heads
    blocks = {
        "attention_norm": ParamSpec((L, E), ("layers", "embed"), "ones"),
        "wqkv": ParamSpec((L, E, K, G + 2, D), ("layers", "embed", "kv_heads", "qkv", "head_dim")),
        "wo": ParamSpec((L, H, D, E), ("layers", "heads", "head_dim", "embed")),
        "ffn_norm": ParamSpec((L, E), ("layers", "embed"), "ones"),
        "w1": ParamSpec((L, E, M), ("layers", "embed", "mlp")),
        "w3": ParamSpec((L, E, M), ("layers", "embed", "mlp")),
        "w2": ParamSpec((L, M, E), ("layers", "mlp", "embed")),
    }
    if cfg.attention_bias:
        blocks["wqkv_bias"] = ParamSpec((L, K, G + 2, D), ("layers", "kv_heads", "qkv", "head_dim"), "zeros")
        blocks["wo_bias"] = ParamSpec((L, E), ("layers", "embed"), "zeros")
    if cfg.mlp_bias:
        blocks["w1_bias"] = ParamSpec((L, M), ("layers", "mlp"), "zeros")
        blocks["w3_bias"] = ParamSpec((L, M), ("layers", "mlp"), "zeros")
        blocks["w2_bias"] = ParamSpec((L, E), ("layers", "embed"), "zeros")
    specs = {
        "tok_embeddings": ParamSpec((V, E), ("vocab", "embed")),
        "layers": blocks,
        "norm": ParamSpec((E,), ("embed",), "ones"),
    }
    if not cfg.tie_word_embeddings:
        specs["output"] = ParamSpec((E, V), ("embed", "vocab"))
    return specs


def _is_spec(x) -> bool:
    return isinstance(x, ParamSpec)


def abstract(cfg: ModelConfig) -> dict:
    """The params tree as ``jax.ShapeDtypeStruct`` leaves (no memory allocated)."""
    dtype = jnp.dtype(cfg.param_dtype)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), param_specs(cfg), is_leaf=_is_spec)


def count_params(cfg: ModelConfig) -> int:
    return sum(math.prod(s.shape) for s in jax.tree.leaves(param_specs(cfg), is_leaf=_is_spec))


def param_shardings(cfg: ModelConfig, mesh, rules=None) -> dict:
    return jax.tree.map(
        lambda s: shd.named_sharding(mesh, s.axes, s.shape, rules), param_specs(cfg), is_leaf=_is_spec
    )


def init(cfg: ModelConfig, key, mesh=None, rules=None) -> dict:
    """Random parameters, created directly with their shardings when ``mesh`` is given."""
    specs = param_specs(cfg)
    leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)
    dtype = jnp.dtype(cfg.param_dtype)

    def make(key):
        keys = jax.random.split(key, len(leaves))
        out = []
        for k, s in zip(keys, leaves):
            if s.init == "ones":
                out.append(jnp.ones(s.shape, dtype))
            elif s.init == "zeros":
                out.append(jnp.zeros(s.shape, dtype))
            else:
                out.append((cfg.initializer_range * jax.random.normal(k, s.shape, jnp.float32)).astype(dtype))
        return jax.tree.unflatten(treedef, out)

    out_shardings = param_shardings(cfg, mesh, rules) if mesh is not None else None
    return jax.jit(make, out_shardings=out_shardings)(key)


# ---------------------------------------------------------------------------
# Forward


def _qkv(p, x, cos, sin, cfg: ModelConfig):
    """Project the normed input to rotated q ``[B,T,H,D]`` and k, v ``[B,T,K,D]``."""
    h = layers.rms_norm(x, p["attention_norm"], cfg.rms_norm_eps)
    qkv = layers.linear(h, p["wqkv"], p.get("wqkv_bias"))  # [B, T, K, G+2, D]
    b, t = x.shape[:2]
    g = cfg.q_per_kv
    q = qkv[:, :, :, :g, :].reshape(b, t, cfg.num_heads, cfg.head_dim)
    k, v = qkv[:, :, :, g, :], qkv[:, :, :, g + 1, :]
    return layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin), v


def _finish(p, x, attn, cfg: ModelConfig):
    """Output projection, residual, feed-forward, residual."""
    x = x + layers.linear(attn.reshape(*attn.shape[:2], -1), p["wo"].reshape(-1, p["wo"].shape[-1]), p.get("wo_bias"))
    h = layers.rms_norm(x, p["ffn_norm"], cfg.rms_norm_eps)
    ff = layers.swiglu(h, p["w1"], p["w3"], p["w2"], p.get("w1_bias"), p.get("w3_bias"), p.get("w2_bias"))
    return x + ff


def forward(params, batch, cfg: ModelConfig, cache=None, *, execution: Execution = DEFAULT_EXECUTION):
    """Logits ``[B, T, V]`` (float32) and the updated cache (or None).

    ``batch``: ``tokens [B, T]`` int32 and optionally ``positions [B, T]`` (default
    0..T-1) and ``segment_ids [B, T]`` (default all ones; 0 = padding). With a cache,
    the tokens are appended after each row's cached tokens and attend to them.
    ``execution``: how to run (compute dtype, remat, attention kernel); the default computes
    in the params' dtype with XLA attention and no remat.
    """
    x, cache = hidden_states(params, batch, cfg, cache, execution=execution)
    return head_logits(params, x, cfg, execution=execution), cache


def head_weight(params, cfg: ModelConfig):
    """``(weight, vocab_axis)`` of the output head: ``output [E, V]`` (axis 1) or, tied, ``tok_embeddings [V, E]``
    (axis 0; contracted as stored, never transposed)."""
    if cfg.tie_word_embeddings:
        return params["tok_embeddings"], 0
    return params["output"], 1


def head_logits(params, x, cfg: ModelConfig, *, execution: Execution = DEFAULT_EXECUTION):
    """Float32 logits ``[..., V]`` of final hidden states ``x [..., E]`` (tied or untied head)."""
    w, vocab_axis = head_weight(params, cfg)
    return layers.output_logits(x, w.astype(jnp.dtype(execution.compute_dtype(cfg))), vocab_axis)


def hidden_states(params, batch, cfg: ModelConfig, cache=None, *, execution: Execution = DEFAULT_EXECUTION):
    """The final-normed hidden states ``[B, T, E]`` (compute dtype) and the cache: ``forward``
    without the output head (``head_logits`` applies it), for losses that chunk the head."""
    tokens = batch["tokens"]
    b, t = tokens.shape
    positions = batch.get("positions")
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    segment_ids = batch.get("segment_ids")
    if segment_ids is None:
        segment_ids = jnp.ones((b, t), jnp.int32)
    dtype = jnp.dtype(execution.compute_dtype(cfg))
    # Under a mesh the table is gathered whole for the lookup (FSDP gathers every layer's weights the
    # same way): looking tokens up in a table split along the embedding would give activations split
    # along it, which GSPMD moves to the batch x sequence split only by replicating them.
    table = shd.constrain(params["tok_embeddings"], ("vocab", None))
    x = jnp.take(table, tokens, axis=0).astype(dtype)

    if cache is None:
        seq_len = jnp.max(jnp.where(segment_ids != 0, positions, 0), axis=1) + 1
    else:
        step = kv_cache.begin(cache, segment_ids)
        if batch.get("positions") is None:
            positions = step.slots
        seq_len = step.lengths
    cos, sin = layers.rope_tables(positions, cfg, seq_len)
    blocks = params["layers"]

    def cast(p):
        # per layer, inside the loop: casting the stacked weights up front would hold a second,
        # compute-dtype copy of every layer at once
        return jax.tree.map(lambda w: w.astype(dtype), p, is_leaf=layers.is_structured_weight)

    if cache is None:
        # Under a mesh (the train step's), activations keep their batch and sequence split, and
        # attention gathers the keys and values of the whole sequence: context parallelism when
        # the mesh has a ``sequence`` axis. Without one these constraints do nothing.
        x = shd.constrain(x, ACTIVATION_AXES)
        kv_segment_ids, kv_positions = (shd.constrain(a, ("batch", None)) for a in (segment_ids, positions))

        def layer(x, p):
            p = cast(p)
            q, k, v = _qkv(p, x, cos, sin, cfg)
            q = shd.constrain(q, ("batch", "seq", "heads", None))
            k, v = (shd.constrain(a, ("batch", None, "kv_heads", None)) for a in (k, v))
            attn = layers.attention(
                q, k, v, segment_ids, positions, kv_segment_ids, kv_positions, impl=execution.attention_impl,
                block=execution.attention_chunk,
            )
            attn = shd.constrain(attn, ("batch", "seq", "heads", None))
            return shd.constrain(_finish(p, x, attn, cfg), ACTIVATION_AXES)

        if isinstance(blocks, (list, tuple)):  # per-layer weights (the decoder's layout)
            for p in blocks:
                x = layer(x, p)
        else:
            x = remat.scan_layers(layer, x, blocks, execution.remat)
    else:
        # The cache owns its layout: each layer hands it the new keys and values and gets the
        # attention over everything cached so far (kv_cache.DenseKV / PagedKV).
        def body(carry, p):
            x, cache, i = carry
            p = cast(p)
            q, k, v = _qkv(p, x, cos, sin, cfg)
            attn, cache = cache.write_and_attend(i, step, q, k, v, impl=execution.attention_impl)
            return (_finish(p, x, attn, cfg), cache, i + 1), None

        if isinstance(blocks, (list, tuple)):
            # Per-layer weights (the decoder's layout): a Python loop reads each layer's weights
            # in place, where scan would copy its slice of the stacked arrays every step.
            carry = (x, cache, 0)
            for p in blocks:
                carry, _ = body(carry, p)
            x, cache, _ = carry
        else:
            (x, cache, _), _ = jax.lax.scan(body, (x, cache, 0), blocks)
        cache = kv_cache.finish(cache, step)

    x = layers.rms_norm(x, params["norm"].astype(dtype), cfg.rms_norm_eps)
    return x, cache


@partial(jax.jit, static_argnames=("cfg", "execution"))
def forward_jit(params, batch, cfg: ModelConfig, cache=None, *, execution: Execution = DEFAULT_EXECUTION):
    return forward(params, batch, cfg, cache, execution=execution)
