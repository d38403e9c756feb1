"""Attention against a paged KV cache: decode (one new token) and chunked prefill.

K/V live in pages `[kv_heads, num_pages, page_size, head_dim]` addressed per sequence by
`block_tables [batch, pages_per_seq]`; `lengths [batch]` is ragged. Optional int8 K/V
with symmetric per-token, per-head scales. One kernel serves both entry points (decode
is a chunk of one token) and splits long contexts over programs (flash-decoding), the
partial results merged by their log-sum-exp. It does not write the cache; the caller
appends new K/V to the pages before calling. Triton lowering on GPU (`kernels/__init__`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.backend import (
    block_size,
    next_power_of_2,
    resolve_interpret,
    round_up,
    triton_params,
)

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


# ------------------------------------------------------------------------ int8 KV cache


def quantize_kv_int8(x):
    """x: [..., head_dim] float -> (int8 [..., head_dim], f32 scales [...]).

    Symmetric, one scale per token per head (x ~= values * scale). LMDeploy's KV int8 is
    asymmetric (scale and zero point per token per head); K and V are close to zero-mean
    per token, so the zero point buys little and would cost a second stream and term.
    """
    x = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(x), axis=-1)
    scale = jnp.where(amax == 0, 1.0, amax / 127.0)
    values = jnp.clip(jnp.round(x / scale[..., None]), -127, 127).astype(jnp.int8)
    return values, scale


def dequantize_kv_int8(values, scales, dtype=jnp.float32):
    return (values.astype(jnp.float32) * scales[..., None].astype(jnp.float32)).astype(dtype)


# --------------------------------------------------------------------------- references


def _gather_pages(pages, block_tables):
    """pages [kv_heads, num_pages, page_size, ...] -> [batch, pages_per_seq * page_size, kv_heads, ...]."""
    g = pages[:, block_tables]  # [kv_heads, batch, pages_per_seq, page_size, ...]
    kvh, batch, pps, page = g.shape[:4]
    g = g.reshape(kvh, batch, pps * page, *g.shape[4:])
    return jnp.moveaxis(g, 0, 2)


def paged_prefill_reference(
    q, k_pages, v_pages, block_tables, lengths, *, q_lengths=None, k_scales=None, v_scales=None, sm_scale=None
):
    """Plain-jnp chunked prefill; semantics of `paged_prefill_attention`."""
    batch, chunk, heads, head_dim = q.shape
    kv_heads = k_pages.shape[0]
    groups = heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    q_lengths = jnp.full((batch,), chunk, jnp.int32) if q_lengths is None else q_lengths
    k = _gather_pages(k_pages, block_tables).astype(jnp.float32)
    v = _gather_pages(v_pages, block_tables).astype(jnp.float32)
    if k_scales is not None:
        k = k * _gather_pages(k_scales, block_tables)[..., None]
        v = v * _gather_pages(v_scales, block_tables)[..., None]
    qg = q.astype(jnp.float32).reshape(batch, chunk, kv_heads, groups, head_dim)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, precision=lax.Precision.HIGHEST) * scale
    t = jnp.arange(chunk)[None, :]
    q_pos = lengths[:, None] - q_lengths[:, None] + t  # [batch, chunk]
    k_pos = jnp.arange(k.shape[1])[None, None, :]
    mask = (k_pos <= q_pos[:, :, None]) & (k_pos < lengths[:, None, None])
    mask &= (t < q_lengths[:, None])[:, :, None]
    mask = mask[:, None, None]
    s = jnp.where(mask, s, MASK_VALUE)
    p = jnp.where(mask, jnp.exp(s - s.max(-1, keepdims=True)), 0.0)
    denom = p.sum(-1, keepdims=True)
    p = p / jnp.where(denom == 0, 1.0, denom)
    o = jnp.einsum("bhgqk,bkhd->bqhgd", p, v, precision=lax.Precision.HIGHEST)
    return o.reshape(batch, chunk, heads, head_dim).astype(q.dtype)


def paged_decode_reference(
    q, k_pages, v_pages, block_tables, lengths, *, k_scales=None, v_scales=None, sm_scale=None
):
    """Plain-jnp decode attention; semantics of `paged_decode_attention`."""
    return paged_prefill_reference(
        q[:, None],
        k_pages,
        v_pages,
        block_tables,
        lengths,
        k_scales=k_scales,
        v_scales=v_scales,
        sm_scale=sm_scale,
    )[:, 0]


# ------------------------------------------------------------------------------- kernel


@dataclasses.dataclass(frozen=True)
class _Config:
    groups: int  # query heads per kv head; row r of a block is token r // groups
    block_r: int  # rows (token, head) per program
    pages_per_step: int  # pages gathered into one [pages_per_step * page_size, D] tile
    steps_per_split: int
    sm_scale: float
    quantized: bool
    interpret: bool


def _dot(a, b, trans_b=False):
    dims = (((1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _paged_kernel(lengths_ref, q_lengths_ref, tables_ref, q_ref, k_ref, v_ref, *refs, cfg):
    # lengths_ref, q_lengths_ref: [batch]; tables_ref: [num_splits * pages_per_split];
    # q_ref: [block_r, D]; k_ref, v_ref: [num_pages, page_size, D] (one kv head);
    # (ks_ref, vs_ref: [num_pages, page_size] when quantized);
    # o_ref: [block_r, D] f32 (normalized within this split); lse_ref: [block_r]
    if cfg.quantized:
        ks_ref, vs_ref, o_ref, lse_ref = refs
    else:
        o_ref, lse_ref = refs
    b, ir, split = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    num_pages, page_size, head_dim = k_ref.shape
    pages = cfg.pages_per_step
    block_k = pages * page_size
    length = lengths_ref[b]
    q_len = q_lengths_ref[b]
    q = q_ref[...]
    token = (ir * cfg.block_r + lax.iota(jnp.int32, cfg.block_r)) // cfg.groups
    q_pos = jnp.where(token < q_len, length - q_len + token, -1)  # -1: sees no key
    # Keys this block may see: up to its last valid token's position (causal) and length.
    last_token = jnp.minimum(((ir + 1) * cfg.block_r - 1) // cfg.groups, q_len - 1)
    kv_end = jnp.minimum(length, length - q_len + last_token + 1)
    lo = split * cfg.steps_per_split
    hi = jnp.minimum(lo + cfg.steps_per_split, lax.div(jnp.maximum(kv_end, 0) + block_k - 1, block_k))

    def gather(ref, ids):  # ref [num_pages, page_size, ...] -> [block_k, ...]
        tile = ref[ids]
        return tile.reshape(block_k, *tile.shape[2:])

    def body(j, carry):
        m, l, acc = carry
        # Table slots past a sequence's pages may hold anything: clamp, then mask by length.
        ids = jnp.clip(tables_ref[pl.ds(j * pages, pages)], 0, num_pages - 1)
        k = gather(k_ref, ids).astype(q.dtype)
        v = gather(v_ref, ids).astype(q.dtype)
        s = _dot(q, k, trans_b=True)
        if cfg.quantized:
            s = s * gather(ks_ref, ids).astype(jnp.float32)[None, :]
        s = s * cfg.sm_scale
        k_pos = j * block_k + lax.iota(jnp.int32, block_k)
        mask = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] < length)
        s = jnp.where(mask, s, MASK_VALUE)
        m_new = jnp.maximum(m, s.max(axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        l = alpha * l + p.sum(axis=1)
        if cfg.quantized:
            p = p * gather(vs_ref, ids).astype(jnp.float32)[None, :]
        acc = alpha[:, None] * acc + _dot(p.astype(q.dtype), v)
        return m_new, l, acc

    m0 = jnp.full((cfg.block_r,), MASK_VALUE, jnp.float32)
    l0 = jnp.zeros((cfg.block_r,), jnp.float32)
    acc0 = jnp.zeros((cfg.block_r, head_dim), jnp.float32)
    m, l, acc = lax.fori_loop(lo, jnp.maximum(hi, lo), body, (m0, l0, acc0))
    l_safe = jnp.where(l == 0.0, 1.0, l)
    o_ref[...] = acc / l_safe[:, None]
    lse_ref[...] = jnp.where(l == 0.0, MASK_VALUE, m + jnp.log(l_safe))


def _default_splits(programs, steps):
    """Enough programs to fill a large GPU (~2 per SM on H100), at least 2 steps each."""
    want = max(1, -(-256 // programs))
    return max(1, min(want, steps // 2))


def _paged_attention(
    q, k_pages, v_pages, block_tables, lengths, q_lengths, k_scales, v_scales, sm_scale, num_splits, interpret
):
    """q [batch, chunk, heads, D] -> [batch, chunk, heads, D]; validated inputs."""
    batch, chunk, heads, head_dim = q.shape
    kv_heads, num_pages, page_size, _ = k_pages.shape
    pages_per_seq = block_tables.shape[1]
    groups = heads // kv_heads
    rows = chunk * groups
    block_r = block_size(rows, 64)
    rows_pad = round_up(rows, block_r)
    row_blocks = rows_pad // block_r
    # ~128 keys per step: a tile large enough to keep loads in flight on GPU.
    pages_per_step = max(1, min(128 // page_size, next_power_of_2(pages_per_seq)))
    steps = -(-pages_per_seq // pages_per_step)
    if num_splits is None:
        num_splits = _default_splits(batch * kv_heads * row_blocks, steps)
    num_splits = max(1, min(int(num_splits), steps))
    steps_per_split = -(-steps // num_splits)
    table_width = num_splits * steps_per_split * pages_per_step
    block_tables = jnp.pad(block_tables, ((0, 0), (0, table_width - pages_per_seq)))
    quantized = k_scales is not None
    cfg = _Config(
        groups=groups,
        block_r=block_r,
        pages_per_step=pages_per_step,
        steps_per_split=steps_per_split,
        sm_scale=float(1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale),
        quantized=quantized,
        interpret=resolve_interpret(interpret),
    )

    # [batch, chunk, heads, D] -> [batch, kv_heads, chunk * groups (padded), D]
    qr = q.reshape(batch, chunk, kv_heads, groups, head_dim).transpose(0, 2, 1, 3, 4)
    qr = qr.reshape(batch, kv_heads, rows, head_dim)
    qr = jnp.pad(qr, ((0, 0), (0, 0), (0, rows_pad - rows), (0, 0)))

    vec = pl.BlockSpec((batch,), lambda b, h, r, s: (0,))
    pages_spec = pl.BlockSpec((None, num_pages, page_size, head_dim), lambda b, h, r, s: (h, 0, 0, 0))
    in_specs = [
        vec,
        vec,
        pl.BlockSpec((None, table_width), lambda b, h, r, s: (b, 0)),
        pl.BlockSpec((None, None, block_r, head_dim), lambda b, h, r, s: (b, h, r, 0)),
        pages_spec,
        pages_spec,
    ]
    inputs = [lengths, q_lengths, block_tables, qr, k_pages, v_pages]
    if quantized:
        scale_spec = pl.BlockSpec((None, num_pages, page_size), lambda b, h, r, s: (h, 0, 0))
        in_specs += [scale_spec, scale_spec]
        inputs += [k_scales, v_scales]
    o, lse = pl.pallas_call(
        functools.partial(_paged_kernel, cfg=cfg),
        grid=(batch, kv_heads, row_blocks, num_splits),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, None, None, block_r, head_dim), lambda b, h, r, s: (b, h, s, r, 0)),
            pl.BlockSpec((None, None, None, block_r), lambda b, h, r, s: (b, h, s, r)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((batch, kv_heads, num_splits, rows_pad, head_dim), jnp.float32),
            jax.ShapeDtypeStruct((batch, kv_heads, num_splits, rows_pad), jnp.float32),
        ],
        compiler_params=triton_params(num_warps=4, num_stages=2),
        interpret=cfg.interpret,
        name="paged_attention",
    )(*inputs)

    # Merge the splits by their log-sum-exp (a split that saw no key has weight 0).
    weights = jnp.exp(lse - lse.max(axis=2, keepdims=True))
    o = (o * weights[..., None]).sum(axis=2) / weights.sum(axis=2)[..., None]
    o = o[:, :, :rows].reshape(batch, kv_heads, chunk, groups, head_dim)
    return o.transpose(0, 2, 1, 3, 4).reshape(batch, chunk, heads, head_dim).astype(q.dtype)


def _check(q, k_pages, v_pages, block_tables, lengths, k_scales, v_scales, name):
    batch, heads, head_dim = q.shape[0], q.shape[-2], q.shape[-1]
    if k_pages.ndim != 4 or v_pages.shape != k_pages.shape:
        raise ValueError(
            f"{name}: k_pages and v_pages must both be [kv_heads, num_pages, "
            f"page_size, head_dim]; got {k_pages.shape} and {v_pages.shape}"
        )
    kv_heads, _, page_size, page_dim = k_pages.shape
    if page_dim != head_dim or heads % kv_heads:
        raise ValueError(
            f"{name}: q {q.shape} does not fit pages {k_pages.shape}: head_dim "
            f"must match and heads must be a multiple of kv_heads"
        )
    if block_tables.ndim != 2 or block_tables.shape[0] != batch or lengths.shape != (batch,):
        raise ValueError(
            f"{name}: want block_tables [batch, pages_per_seq] and lengths "
            f"[batch] for batch {batch}; got {block_tables.shape} and "
            f"{lengths.shape}"
        )
    if (k_scales is None) != (v_scales is None):
        raise ValueError(f"{name}: pass both k_scales and v_scales, or neither")
    if k_scales is not None and k_scales.shape != k_pages.shape[:3]:
        raise ValueError(
            f"{name}: scales must be [kv_heads, num_pages, page_size] = "
            f"{k_pages.shape[:3]}; got {k_scales.shape}"
        )
    if k_scales is None and jnp.issubdtype(k_pages.dtype, jnp.integer):
        raise ValueError(
            f"{name}: integer pages ({k_pages.dtype}) need k_scales and v_scales; see quantize_kv_int8"
        )


def paged_decode_attention(
    q,
    k_pages,
    v_pages,
    block_tables,
    lengths,
    *,
    k_scales=None,
    v_scales=None,
    sm_scale=None,
    num_splits=None,
    interpret=None,
):
    """One new query token per sequence against its paged K/V.

    q: [batch, heads, head_dim]; k_pages, v_pages: [kv_heads, num_pages, page_size,
    head_dim] (float, or int8 with k_scales/v_scales [kv_heads, num_pages, page_size]);
    block_tables: [batch, pages_per_seq] int32 (slots past a sequence's pages may hold
    anything: they are clamped and masked); lengths: [batch] int32, the number of tokens in the cache
    including the new one (0 gives a zero row). Returns
    [batch, heads, head_dim] in q's dtype. On GPU page_size must be a power of two >= 16.
    """
    _check(q, k_pages, v_pages, block_tables, lengths, k_scales, v_scales, "paged_decode_attention")
    batch = q.shape[0]
    out = _paged_attention(
        q[:, None],
        k_pages,
        v_pages,
        block_tables.astype(jnp.int32),
        lengths.astype(jnp.int32),
        jnp.ones((batch,), jnp.int32),
        k_scales,
        v_scales,
        sm_scale,
        num_splits,
        interpret,
    )
    return out[:, 0]


def paged_prefill_attention(
    q,
    k_pages,
    v_pages,
    block_tables,
    lengths,
    *,
    q_lengths=None,
    k_scales=None,
    v_scales=None,
    sm_scale=None,
    num_splits=None,
    interpret=None,
):
    """A chunk of new tokens per sequence against the pages already written (causal).

    q: [batch, chunk, heads, head_dim]; the chunk's own K/V must already be in the pages.
    lengths: [batch] tokens in the cache including the chunk; q_lengths: [batch] valid
    new tokens per sequence (default chunk), left-aligned in the chunk. Query i sits at
    position lengths - q_lengths + i and sees keys at positions <= its own; rows
    i >= q_lengths give 0. Other arguments as in `paged_decode_attention`.
    """
    _check(q, k_pages, v_pages, block_tables, lengths, k_scales, v_scales, "paged_prefill_attention")
    batch, chunk = q.shape[:2]
    if q_lengths is None:
        q_lengths = jnp.full((batch,), chunk, jnp.int32)
    return _paged_attention(
        q,
        k_pages,
        v_pages,
        block_tables.astype(jnp.int32),
        lengths.astype(jnp.int32),
        q_lengths.astype(jnp.int32),
        k_scales,
        v_scales,
        sm_scale,
        num_splits,
        interpret,
    )
