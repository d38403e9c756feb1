"""Building blocks of the decoder: RMSNorm, rotary embeddings, SwiGLU and attention.

Each is a pure function over arrays. ``attention`` is the single dispatch point that
kernels/ plugs into (``impl="xla" | "pallas" | "auto"``); the XLA path here is the
reference every kernel is checked against. Nothing here knows about checkpoints, and meshes
only through ``intern_jax.sharding``'s ``constrain``/``is_split`` under the mesh a caller traces
with (the train step's): without one, every function runs as on a single device.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from intern_jax import sharding as shd
from intern_jax.config import ModelConfig
from intern_jax.sharding import context_parallel

NEG_INF = -1e30


def rms_norm(x, scale, eps: float):
    """RMSNorm computed in float32, cast back to the input dtype before the scale (as InternLM2)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * xf.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig, seq_len=None):
    """Inverse frequencies ``[..., head_dim // 2]``.

    With ``dynamic`` (NTK) scaling the base grows once ``seq_len`` (per row, traced)
    exceeds ``max_position_embeddings``, exactly as the Hugging Face implementations do.
    """
    dim = cfg.head_dim
    exponent = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    base = jnp.asarray(cfg.rope_theta, jnp.float32)
    if cfg.rope_scaling.type == "dynamic" and seq_len is not None:
        factor = cfg.rope_scaling.factor
        max_pos = cfg.max_position_embeddings
        seq_len = jnp.asarray(seq_len, jnp.float32)[..., None]
        grown = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        base = jnp.where(seq_len > max_pos, grown, base)
    return 1.0 / (base**exponent)


def rope_tables(positions, cfg: ModelConfig, seq_len=None):
    """cos, sin of shape ``[batch, seq, head_dim]`` (rotate-half layout), float32.

    ``seq_len [batch]`` is the length that dynamic NTK scaling looks at.
    """
    pos = positions.astype(jnp.float32)
    if cfg.rope_scaling.type == "linear":
        pos = pos / cfg.rope_scaling.factor
    inv_freq = rope_inv_freq(cfg, seq_len)  # [D/2] or [B, D/2]
    if inv_freq.ndim == 1:
        freqs = pos[..., None] * inv_freq
    else:
        freqs = pos[..., None] * inv_freq[:, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """x: ``[batch, seq, heads, head_dim]``; cos/sin: ``[batch, seq, head_dim]``."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def is_structured_weight(w) -> bool:
    """True for a weight leaf that is a small pytree computing its own product (LoRA, quantized).

    Such a weight has ``matmul(x)``, ``astype(dtype)``, ``reshape(*shape)`` and ``shape``, and
    every array inside it keeps the leading ``layers`` axis, so ``lax.scan`` slices it per layer.
    """
    return hasattr(w, "matmul")


def reshape_target(shape: tuple, size: int) -> tuple[int, ...]:
    """A structured weight's ``reshape(*shape)`` arguments (one tuple, or the sizes one by one) as a
    tuple of sizes, a ``-1`` resolved against the weight's ``size`` elements as ``numpy.reshape`` does."""
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        shape = tuple(size // known if d == -1 else d for d in shape)
    return shape


def rows(x, features: int = 1):
    """``x`` with all but its last ``features`` axes folded into one row axis, for products whose
    weight gradient is then a single-contraction dot (XLA:CPU runs that without a transposed copy of
    the activations). Under a mesh that splits the sequence over devices ``x`` is returned unfolded:
    rows of a split inner axis are not contiguous per device, and GSPMD would gather them."""
    if shd.is_split("seq"):
        return x
    return x.reshape(-1, *x.shape[x.ndim - features:]) if features else x.reshape(-1)


def linear(x, w, b=None):
    """``x @ w (+ b)`` with ``w`` stored ``[in, ..., out...]``; the one matmul dispatch point.

    ``w`` is an array, or a structured weight (``is_structured_weight``) that computes the
    product itself, e.g. base + low-rank adapter, or dequantize-then-multiply.
    """
    if is_structured_weight(w):
        y = w.matmul(x)
    else:
        # one 2-D product: with the leading axes folded into rows, the weight gradient is a
        # single-contraction dot, which XLA:CPU runs without a transposed copy of the activations
        y = jnp.dot(rows(x), w.astype(x.dtype).reshape(w.shape[0], -1))
        y = y.reshape(*x.shape[:-1], *w.shape[1:])
    if b is not None:
        y = y + b.astype(y.dtype)
    return y


def output_logits(x, w, vocab_axis: int = 1):
    """Float32 logits ``[..., V]`` of ``x [..., E]`` and a head ``w`` stored ``[E, V]`` (``vocab_axis=1``)
    or ``[V, E]`` (tied embeddings, contracted as stored). The product runs on 2-D ``[rows, E]``, so
    the weight gradient is a single-contraction dot (no transposed copy of the activations on XLA:CPU)."""
    if is_structured_weight(w) and vocab_axis == 1:  # a packed head [E, V] (model/quantized.py)
        return w.matmul(x, out_dtype=jnp.float32)
    spec = "...e,ev->...v" if vocab_axis == 1 else "...e,ve->...v"
    logits = jnp.einsum(spec, rows(x), w.astype(x.dtype), preferred_element_type=jnp.float32)
    return logits.reshape(*x.shape[:-1], logits.shape[-1])


def swiglu(x, w1, w3, w2, b1=None, b3=None, b2=None):
    """``w2(silu(w1 x) * w3 x)``. Whether the backward pass stores the gate's elementwise results or
    recomputes them from ``w1 x`` and ``w3 x`` is the remat policy's choice (``model.remat``)."""
    gate = linear(x, w1, b1)
    up = linear(x, w3, b3)
    return linear(jax.nn.silu(gate) * up, w2, b2)


def attention_mask(q_segment_ids, q_positions, kv_segment_ids, kv_positions):
    """``[batch, q, kv]`` bool: same nonzero segment, and key position <= query position.

    Positions restart per packed document, so causality by position inside a segment
    is causality by index. The same rule serves training, prefill and cached decode.
    """
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    valid = (q_segment_ids[:, :, None] != 0) & (kv_segment_ids[:, None, :] != 0)
    causal = kv_positions[:, None, :] <= q_positions[:, :, None]
    return same & valid & causal


def attention_xla(q, k, v, mask, sm_scale=None, *, kv_heads_first: bool = False):
    """Reference grouped-query attention.

    q: ``[batch, q, heads, head_dim]``; k, v: ``[batch, kv, kv_heads, head_dim]`` (``kv_heads_first``:
    ``[kv_heads, batch, kv, head_dim]``, the layout pages gather into, used as it is);
    mask: ``[batch, q, kv]``. Query head ``h`` reads kv head ``h // (heads // kv_heads)``.
    Rows with no visible key return zeros.
    """
    b, t, h, d = q.shape
    s, kvh = (k.shape[2], k.shape[0]) if kv_heads_first else (k.shape[1], k.shape[2])
    g = h // kvh
    scale = sm_scale if sm_scale is not None else d**-0.5
    # Each kv head's G query heads are merged with the query positions into one row axis, so
    # every product (and each of its gradients) contracts a single axis: XLA:CPU then runs
    # them as plain batched matmuls without transposed copies of the [.., rows, s] scores.
    # Positions are the outer part of a row (row = position * G + head), so rows split over
    # sequence-parallel devices exactly as the positions do. The two batch axes (batch, kv head)
    # come in the keys' own order, so the keys are never transposed.
    qh = q.reshape(b, t, kvh, g, d)
    if kv_heads_first:
        qh = qh.transpose(2, 0, 1, 3, 4).reshape(kvh, b, t * g, d)
        kh, vh = k, v
    else:
        qh = qh.transpose(0, 2, 1, 3, 4).reshape(b, kvh, t * g, d)
        qh = shd.constrain(qh, ("batch", "kv_heads", "seq", None))
        kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("xyqd,xysd->xyqs", qh, kh, preferred_element_type=jnp.float32)
    # The mask enters as an additive bias (hidden keys get exactly zero probability), so the
    # backward pass has no select over the scores. A row that sees no key gets a uniform
    # softmax, and the final row factor turns its output (and gradients) to zero.
    bias = jnp.where(mask, 0.0, NEG_INF)
    bias = bias[None, :, :, None, :] if kv_heads_first else bias[:, None, :, None, :]
    x, y = qh.shape[:2]
    scores = (scores.reshape(x, y, t, g, s) * scale + bias).reshape(x, y, t * g, s)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("xyqs,xysd->xyqd", probs.astype(vh.dtype), vh, preferred_element_type=jnp.float32)
    visible = jnp.any(mask, axis=-1).astype(out.dtype)
    visible = visible[None, :, :, None, None] if kv_heads_first else visible[:, None, :, None, None]
    out = out.reshape(x, y, t, g, d) * visible
    back = (1, 2, 0, 3, 4) if kv_heads_first else (0, 2, 1, 3, 4)
    return out.transpose(*back).reshape(b, t, h, d).astype(q.dtype)


def attention_xla_blocks(q, k, v, q_segment_ids, q_positions, kv_segment_ids, kv_positions, block: int):
    """``attention_xla`` over blocks of ``block`` queries, one at a time (``lax.map``), each under
    ``jax.checkpoint``: the scores that exist at once are ``[block, kv]`` instead of ``[q, kv]``,
    and the backward pass recomputes each block's. Blocks are strided (block ``j`` holds queries
    ``j, j + n, j + 2n, ...``; the mask works from positions, not indices), so every block spans
    all devices of a sequence split. Queries are padded to a multiple of the block count with
    padding segment 0, whose rows come out as zeros and are dropped.
    """
    b, t, h, d = q.shape
    n = -(-t // block)
    pad = n * block - t
    if pad:
        q = jnp.pad(q, [(0, 0), (0, pad), (0, 0), (0, 0)])
        q_segment_ids, q_positions = (jnp.pad(a, [(0, 0), (0, pad)]) for a in (q_segment_ids, q_positions))

    def split(x):
        return jnp.moveaxis(x.reshape(b, block, n, *x.shape[2:]), 2, 0)

    @partial(jax.checkpoint, prevent_cse=False)
    def one(xs):
        qb, seg, pos = xs
        return attention_xla(qb, k, v, attention_mask(seg, pos, kv_segment_ids, kv_positions))

    out = jax.lax.map(one, (split(q), split(q_segment_ids), split(q_positions)))  # [n, b, block, h, d]
    return jnp.moveaxis(out, 0, 2).reshape(b, n * block, h, d)[:, :t]


def attention(q, k, v, q_segment_ids, q_positions, kv_segment_ids, kv_positions, *, impl="xla", block=0):
    """Attention dispatch: the model calls only this.

    The Pallas flash kernel takes the self-attention case (keys are the queries' own
    tokens, causal by index; under a mesh, per device: ``sharding.context_parallel``); attention over a
    KV cache goes through the XLA path. ``block > 0`` runs the XLA path over blocks of that
    many queries (``attention_xla_blocks``).
    """
    if impl in ("pallas", "auto"):
        kernel = _flash_attention_or_none(impl)
        if kernel is not None:
            if jax.sharding.get_abstract_mesh().empty:
                return kernel(q, k, v, segment_ids=q_segment_ids, causal=True)
            return context_parallel.attention_per_device(kernel, q, k, v, q_segment_ids, kv_segment_ids)
    if 0 < block < q.shape[1]:
        return attention_xla_blocks(q, k, v, q_segment_ids, q_positions, kv_segment_ids, kv_positions, block)
    mask = attention_mask(q_segment_ids, q_positions, kv_segment_ids, kv_positions)
    return attention_xla(q, k, v, mask)


def _flash_attention_or_none(impl):
    """The Pallas kernel for ``pallas``; for ``auto`` only where it is compiled (GPU)."""
    if impl == "auto" and jax.default_backend() != "gpu":
        return None
    try:
        from kernels import flash_attention
    except ImportError as e:  # kernels/ ships with the project; this only guards partial installs
        if impl == "pallas":
            raise ImportError("attention_impl='pallas' needs the kernels package") from e
        return None
    return flash_attention
