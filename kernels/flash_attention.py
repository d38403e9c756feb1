"""Flash attention (forward and backward) for training and prefill, with its jnp reference.

Blocked online-softmax attention over `[batch, seq, heads, head_dim]` with GQA (K/V are
read per kv head, never repeated), packed-document `segment_ids` and end-aligned causal
masking; gradients by `custom_vjp` with separate dK/dV and dQ kernels (no atomics).
Lowered with the Pallas Triton backend on GPU (see `kernels/__init__.py`). It does not
handle decode against a paged KV cache: that is `kernels/paged_attention.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.backend import block_size, resolve_interpret, round_up, triton_params

# Finite "minus infinity": keeps exp(s - m) free of inf - inf for rows that see no key.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_reference(q, k, v, *, segment_ids=None, kv_segment_ids=None, causal=True, sm_scale=None):
    """Plain-jnp attention with the same semantics as `flash_attention`.

    q: [batch, seq_q, heads, head_dim]; k, v: [batch, seq_kv, kv_heads, head_dim].
    Query head h reads kv head h // (heads // kv_heads). With `causal`, query i sits at
    kv position seq_kv - seq_q + i. A query that may attend to no key gives 0.
    """
    batch, seq_q, heads, head_dim = q.shape
    seq_kv, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    qg = q.reshape(batch, seq_q, kv_heads, groups, head_dim)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    s = s * scale
    mask = jnp.ones((batch, seq_q, seq_kv), dtype=bool)
    if segment_ids is not None:
        seg, kv_seg = segment_ids, segment_ids if kv_segment_ids is None else kv_segment_ids
        mask &= (seg[:, :, None] == kv_seg[:, None, :]) & (seg[:, :, None] != 0)
    if causal:
        q_pos = jnp.arange(seq_q)[:, None] + (seq_kv - seq_q)
        mask &= (jnp.arange(seq_kv)[None, :] <= q_pos)[None]
    mask = mask[:, None, None]
    s = jnp.where(mask, s, MASK_VALUE)
    p = jnp.exp(s - s.max(-1, keepdims=True))
    p = jnp.where(mask, p, 0.0)
    denom = p.sum(-1, keepdims=True)
    p = p / jnp.where(denom == 0, 1.0, denom)
    o = jnp.einsum("bhgqk,bkhd->bqhgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o.reshape(batch, seq_q, heads, head_dim).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class _Config:
    causal: bool
    sm_scale: float
    offset: int  # seq_kv - seq_q (true lengths): query i sits at kv position offset + i
    block_q: int
    block_k: int
    interpret: bool


def _dot(a, b, trans_a=False, trans_b=False):
    """2-D matmul accumulating in f32; transposes are folded into the contraction."""
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _mask(q_seg, k_seg, q_pos, k_pos, causal):
    """[block_q, block_k] bool: same nonzero segment and (causal) key not after query."""
    mask = (q_seg[:, None] == k_seg[None, :]) & (q_seg[:, None] != 0)
    if causal:
        mask &= k_pos[None, :] <= q_pos[:, None]
    return mask


def _kv_blocks_for_q_block(cfg, iq, num_kv_blocks):
    """Number of kv blocks the q block `iq` may see (causal: up to its last query)."""
    if not cfg.causal:
        return num_kv_blocks
    last = cfg.offset + (iq + 1) * cfg.block_q  # one past the last kv position seen
    hi = lax.div(last + cfg.block_k - 1, cfg.block_k)
    return jnp.clip(hi, 0, num_kv_blocks)


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, *, cfg):
    # q_ref: [block_q, D]; k_ref, v_ref: [seq_kv_pad, D]; qseg_ref: [block_q];
    # kseg_ref: [seq_kv_pad]; o_ref: [block_q, D]; lse_ref: [block_q]
    iq = pl.program_id(2)
    block_q, block_k = cfg.block_q, cfg.block_k
    num_kv_blocks = k_ref.shape[0] // block_k
    q = q_ref[...]
    q_seg = qseg_ref[...]
    q_pos = cfg.offset + iq * block_q + lax.iota(jnp.int32, block_q)

    def body(j, carry):
        m, l, acc = carry
        start = pl.multiple_of(j * block_k, block_k)
        k = k_ref[pl.ds(start, block_k), :]
        v = v_ref[pl.ds(start, block_k), :]
        k_pos = start + lax.iota(jnp.int32, block_k)
        mask = _mask(q_seg, kseg_ref[pl.ds(start, block_k)], q_pos, k_pos, cfg.causal)
        s = jnp.where(mask, _dot(q, k, trans_b=True) * cfg.sm_scale, MASK_VALUE)
        m_new = jnp.maximum(m, s.max(axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        l = alpha * l + p.sum(axis=1)
        acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v)
        return m_new, l, acc

    m0 = jnp.full((block_q,), MASK_VALUE, jnp.float32)
    l0 = jnp.zeros((block_q,), jnp.float32)
    acc0 = jnp.zeros(o_ref.shape, jnp.float32)
    hi = _kv_blocks_for_q_block(cfg, iq, num_kv_blocks)
    m, l, acc = lax.fori_loop(0, hi, body, (m0, l0, acc0))
    l_safe = jnp.where(l == 0.0, 1.0, l)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l_safe)


def _flash_fwd(q, k, v, q_seg, k_seg, cfg):
    """Padded inputs -> (o [B, Sq, H, D], lse [B, H, Sq] f32)."""
    batch, seq_q, heads, head_dim = q.shape
    seq_kv, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    grid = (batch, heads, seq_q // cfg.block_q)
    kv_spec = pl.BlockSpec((None, seq_kv, None, head_dim), lambda b, h, i: (b, 0, h // groups, 0))
    q_spec = pl.BlockSpec((None, cfg.block_q, None, head_dim), lambda b, h, i: (b, i, h, 0))
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg),
        grid=grid,
        in_specs=[
            q_spec,
            kv_spec,
            kv_spec,
            pl.BlockSpec((None, cfg.block_q), lambda b, h, i: (b, i)),
            pl.BlockSpec((None, seq_kv), lambda b, h, i: (b, 0)),
        ],
        out_specs=[
            q_spec,
            pl.BlockSpec((None, None, cfg.block_q), lambda b, h, i: (b, h, i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, seq_q), jnp.float32),
        ],
        compiler_params=triton_params(num_warps=4 if head_dim <= 64 else 8, num_stages=2),
        interpret=cfg.interpret,
        name="flash_attention_fwd",
    )(q, k, v, q_seg, k_seg)


# ---------------------------------------------------------------------------- backward


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref, dk_ref, dv_ref, *, cfg):
    # One kv block of one kv head, summed over the `groups` query heads that read it.
    # q_ref, do_ref: [seq_q_pad, groups, D]; lse_ref, delta_ref: [groups, seq_q_pad];
    # k_ref, v_ref, dk_ref, dv_ref: [block_k, D]; qseg_ref: [seq_q_pad]; kseg_ref: [block_k]
    ik = pl.program_id(2)
    block_q, block_k = cfg.block_q, cfg.block_k
    num_q_blocks = q_ref.shape[0] // block_q
    groups = q_ref.shape[1]
    k = k_ref[...]
    v = v_ref[...]
    k_seg = kseg_ref[...]
    k_pos = ik * block_k + lax.iota(jnp.int32, block_k)
    if cfg.causal:  # first q block whose last query reaches this kv block
        lo = jnp.minimum(lax.div(jnp.maximum(ik * block_k - cfg.offset, 0), block_q), num_q_blocks)
    else:
        lo = 0

    def q_block(i, carry, g):
        dk, dv = carry
        start = pl.multiple_of(i * block_q, block_q)
        q = q_ref[pl.ds(start, block_q), g, :]
        do = do_ref[pl.ds(start, block_q), g, :]
        lse = lse_ref[g, pl.ds(start, block_q)]
        delta = delta_ref[g, pl.ds(start, block_q)]
        q_pos = cfg.offset + start + lax.iota(jnp.int32, block_q)
        mask = _mask(qseg_ref[pl.ds(start, block_q)], k_seg, q_pos, k_pos, cfg.causal)
        s = _dot(q, k, trans_b=True) * cfg.sm_scale
        p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
        dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
        dp = _dot(do, v, trans_b=True)
        ds = p * (dp - delta[:, None])
        dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    def head(g, carry):
        return lax.fori_loop(lo, num_q_blocks, functools.partial(q_block, g=g), carry)

    zeros = jnp.zeros(dk_ref.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, groups, head, (zeros, zeros))
    dk_ref[...] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref, dq_ref, *, cfg):
    # q_ref, do_ref, dq_ref: [block_q, D]; k_ref, v_ref: [seq_kv_pad, D];
    # lse_ref, delta_ref, qseg_ref: [block_q]; kseg_ref: [seq_kv_pad]
    iq = pl.program_id(2)
    block_q, block_k = cfg.block_q, cfg.block_k
    num_kv_blocks = k_ref.shape[0] // block_k
    q = q_ref[...]
    do = do_ref[...]
    lse = lse_ref[...]
    delta = delta_ref[...]
    q_seg = qseg_ref[...]
    q_pos = cfg.offset + iq * block_q + lax.iota(jnp.int32, block_q)

    def body(j, dq):
        start = pl.multiple_of(j * block_k, block_k)
        k = k_ref[pl.ds(start, block_k), :]
        v = v_ref[pl.ds(start, block_k), :]
        k_pos = start + lax.iota(jnp.int32, block_k)
        mask = _mask(q_seg, kseg_ref[pl.ds(start, block_k)], q_pos, k_pos, cfg.causal)
        s = _dot(q, k, trans_b=True) * cfg.sm_scale
        p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
        ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    hi = _kv_blocks_for_q_block(cfg, iq, num_kv_blocks)
    dq = lax.fori_loop(0, hi, body, jnp.zeros(dq_ref.shape, jnp.float32))
    dq_ref[...] = (dq * cfg.sm_scale).astype(dq_ref.dtype)


def _flash_bwd(q, k, v, q_seg, k_seg, o, lse, do, cfg):
    batch, seq_q, heads, head_dim = q.shape
    seq_kv, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    delta = jnp.einsum("bqhd,bqhd->bhq", o.astype(jnp.float32), do.astype(jnp.float32))
    params = triton_params(num_warps=4 if head_dim <= 64 else 8, num_stages=2)
    inputs = (q, k, v, do, lse, delta, q_seg, k_seg)

    full_q = pl.BlockSpec((None, seq_q, groups, head_dim), lambda b, h, j: (b, 0, h, 0))
    full_stat = pl.BlockSpec((None, groups, seq_q), lambda b, h, j: (b, h, 0))
    kv_block = pl.BlockSpec((None, cfg.block_k, None, head_dim), lambda b, h, j: (b, j, h, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, cfg=cfg),
        grid=(batch, kv_heads, seq_kv // cfg.block_k),
        in_specs=[
            full_q,
            kv_block,
            kv_block,
            full_q,
            full_stat,
            full_stat,
            pl.BlockSpec((None, seq_q), lambda b, h, j: (b, 0)),
            pl.BlockSpec((None, cfg.block_k), lambda b, h, j: (b, j)),
        ],
        out_specs=[kv_block, kv_block],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        interpret=cfg.interpret,
        name="flash_attention_dkdv",
    )(*inputs)

    q_block = pl.BlockSpec((None, cfg.block_q, None, head_dim), lambda b, h, i: (b, i, h, 0))
    full_kv = pl.BlockSpec((None, seq_kv, None, head_dim), lambda b, h, i: (b, 0, h // groups, 0))
    stat_block = pl.BlockSpec((None, None, cfg.block_q), lambda b, h, i: (b, h, i))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid=(batch, heads, seq_q // cfg.block_q),
        in_specs=[
            q_block,
            full_kv,
            full_kv,
            q_block,
            stat_block,
            stat_block,
            pl.BlockSpec((None, cfg.block_q), lambda b, h, i: (b, i)),
            pl.BlockSpec((None, seq_kv), lambda b, h, i: (b, 0)),
        ],
        out_specs=q_block,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        interpret=cfg.interpret,
        name="flash_attention_dq",
    )(*inputs)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_seg, k_seg, cfg):
    return _flash_fwd(q, k, v, q_seg, k_seg, cfg)[0]


def _flash_vjp_fwd(q, k, v, q_seg, k_seg, cfg):
    o, lse = _flash_fwd(q, k, v, q_seg, k_seg, cfg)
    return o, (q, k, v, q_seg, k_seg, o, lse)


def _flash_vjp_bwd(cfg, residuals, do):
    q, k, v, q_seg, k_seg, o, lse = residuals
    dq, dk, dv = _flash_bwd(q, k, v, q_seg, k_seg, o, lse, do, cfg)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_vjp_fwd, _flash_vjp_bwd)


def flash_attention(
    q, k, v, *, segment_ids=None, kv_segment_ids=None, causal=True, sm_scale=None, interpret=None, block_q=None,
    block_k=None,
):
    """Blocked attention, differentiable; same semantics as `attention_reference`.

    q: [batch, seq_q, heads, head_dim]; k, v: [batch, seq_kv, kv_heads, head_dim] with
    heads % kv_heads == 0 (query head h reads kv head h // (heads // kv_heads)).
    segment_ids: [batch, seq] int32 (needs seq_q == seq_kv); 0 marks padding, and a query
    attends only to keys of its own nonzero segment. With `kv_segment_ids` [batch, seq_kv],
    `segment_ids` [batch, seq_q] are the queries' and these the keys' (seq_q may differ).
    causal: query i sits at kv position seq_kv - seq_q + i (ends aligned, as in prefill
    after a cached prefix).
    Rows that may attend to no key return 0. Softmax statistics are f32; output has q's
    dtype. interpret=None interprets off-GPU and compiles on GPU.
    """
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(
            f"flash_attention wants q [batch, seq_q, heads, head_dim] and k, v "
            f"[batch, seq_kv, kv_heads, head_dim]; got q {q.shape}, k {k.shape}, "
            f"v {v.shape}"
        )
    batch, seq_q, heads, head_dim = q.shape
    seq_kv, kv_heads = k.shape[1], k.shape[2]
    if k.shape[0] != batch or k.shape[3] != head_dim or heads % kv_heads:
        raise ValueError(
            f"q {q.shape} and k {k.shape} disagree: batch and head_dim must "
            f"match and heads ({heads}) must be a multiple of kv_heads "
            f"({kv_heads})"
        )
    if kv_segment_ids is not None:
        if segment_ids is None or segment_ids.shape != (batch, seq_q) or kv_segment_ids.shape != (batch, seq_kv):
            raise ValueError(
                f"kv_segment_ids {kv_segment_ids.shape} needs segment_ids as well, shaped [batch, seq_q] = "
                f"{(batch, seq_q)} and [batch, seq_kv] = {(batch, seq_kv)}"
            )
    elif segment_ids is not None and (seq_q != seq_kv or segment_ids.shape != (batch, seq_q)):
        raise ValueError(
            f"segment_ids {segment_ids.shape} must be [batch, seq] = "
            f"{(batch, seq_q)} with seq_q == seq_kv (got seq_kv {seq_kv})"
        )
    # 64 x 64 tiles, 4/8 warps: a common Triton starting point, not yet tuned on H100.
    block_q = block_q or block_size(seq_q, 64)
    block_k = block_k or block_size(seq_kv, 64)
    cfg = _Config(
        causal=bool(causal),
        sm_scale=float(1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale),
        offset=seq_kv - seq_q,
        block_q=block_q,
        block_k=block_k,
        interpret=resolve_interpret(interpret),
    )
    if segment_ids is None:
        q_seg = jnp.ones((batch, seq_q), jnp.int32)
        k_seg = jnp.ones((batch, seq_kv), jnp.int32)
    else:
        q_seg = segment_ids.astype(jnp.int32)
        k_seg = q_seg if kv_segment_ids is None else kv_segment_ids.astype(jnp.int32)
    pad_q, pad_k = round_up(seq_q, block_q) - seq_q, round_up(seq_kv, block_k) - seq_kv
    # Padded positions get segment 0: they attend to nothing and nothing attends to them.
    q_p = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
    k_p = jnp.pad(k, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    v_p = jnp.pad(v, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    q_seg = jnp.pad(q_seg, ((0, 0), (0, pad_q)))
    k_seg = jnp.pad(k_seg, ((0, 0), (0, pad_k)))
    o = _flash(q_p, k_p, v_p, q_seg, k_seg, cfg)
    return o[:, :seq_q]
