"""Weight-only quantized matmul `x @ w` (W8A16 and W4A16) with dequantization fused.

W8: `w_q [in, out]` int8, symmetric, `scales [out]` (one per output channel).
W8 grouped: the same int8 `w_q` with `scales [in // group_size, out]` (GGUF's Q8_0 with group 32).
W4: AWQ/GPTQ group layout, asymmetric: `w_q [in // 2, out]` uint8, two 4-bit values per
byte along the input dim (byte i holds input row 2i in its low nibble and row 2i + 1 in
its high nibble), `scales` and `zeros [in // group_size, out]`; w = (q - zero) * scale.
Float offsets instead of integer zero points: `mins [in // group_size, out]` and
w = q * scale + min (GGUF's Q4_1 and Q4_0, whose min is -8 * scale, exactly as the file's
values; the serving format of `intern_jax.model.quantized`), for either width.
Activations stay in bf16/f32 (no activation quantization). Triton lowering on GPU;
`quantized_matmul_xla` is the same product in plain XLA for CPU (and the fallback elsewhere).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.backend import block_size, resolve_interpret, round_up, triton_params


def _scale_dtype(w):
    return w.dtype if jnp.issubdtype(w.dtype, jnp.floating) else jnp.float32


# ------------------------------------------------------------------- layout and helpers


def quantize_w8(w):
    """w [in, out] float -> (w_q [in, out] int8, scales [out]); symmetric per channel."""
    wf = w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(wf), axis=0)
    scales = jnp.where(amax == 0, 1.0, amax / 127.0).astype(_scale_dtype(w))
    w_q = jnp.clip(jnp.round(wf / scales.astype(jnp.float32)), -127, 127).astype(jnp.int8)
    return w_q, scales


def dequantize_w8(w_q, scales, dtype=jnp.float32):
    return (w_q.astype(jnp.float32) * scales.astype(jnp.float32)).astype(dtype)


def pack_int4(values):
    """values [in, out] in 0..15 -> [in // 2, out] uint8 (row 2i low nibble, 2i+1 high)."""
    v = values.astype(jnp.uint8)
    return v[0::2] | (v[1::2] << 4)


def unpack_int4(w_q):
    """[in // 2, out] uint8 -> [in, out] int32 in 0..15 (inverse of `pack_int4`)."""
    low = (w_q & 0xF).astype(jnp.int32)
    high = (w_q >> 4).astype(jnp.int32)
    return jnp.stack([low, high], axis=1).reshape(-1, w_q.shape[1])


def quantize_w4(w, group_size=128):
    """w [in, out] float -> (w_q [in//2, out] uint8, scales, zeros [in//group_size, out]).

    Asymmetric per group of `group_size` input rows: q = clip(round(w / scale) + zero,
    0, 15), zero an integer in 0..15 stored as uint8, scales in w's float dtype.
    """
    d_in, d_out = w.shape
    if group_size % 2 or d_in % group_size:
        raise ValueError(
            f"quantize_w4: input dim {d_in} must be a multiple of an even group_size (got {group_size})"
        )
    wg = w.astype(jnp.float32).reshape(d_in // group_size, group_size, d_out)
    w_min = jnp.minimum(wg.min(axis=1), 0.0)
    w_max = jnp.maximum(wg.max(axis=1), 0.0)
    scales = jnp.where(w_max > w_min, (w_max - w_min) / 15.0, 1.0).astype(_scale_dtype(w))
    s = scales.astype(jnp.float32)
    zeros = jnp.clip(jnp.round(-w_min / s), 0, 15)
    q = jnp.clip(jnp.round(wg / s[:, None]) + zeros[:, None], 0, 15)
    return pack_int4(q.reshape(d_in, d_out)), scales, zeros.astype(jnp.uint8)


def dequantize_w4(w_q, scales, zeros, group_size=128, dtype=jnp.float32):
    q = unpack_int4(w_q).astype(jnp.float32)
    s = jnp.repeat(scales.astype(jnp.float32), group_size, axis=0)
    z = jnp.repeat(zeros.astype(jnp.float32), group_size, axis=0)
    return ((q - z) * s).astype(dtype)


def dequantize(w_q, scales, zeros=None, mins=None, *, bits, group_size=None, dtype=jnp.float32):
    """The float weight `[in, out]` of any layout this module multiplies (see the module docstring)."""
    if mins is not None and zeros is not None:
        raise ValueError("dequantize: pass integer zeros or float mins, not both")
    q = (unpack_int4(w_q) if bits == 4 else w_q).astype(jnp.float32)
    if bits == 4 and mins is None:
        group_size = group_size or 128
        if zeros is None:
            zeros = jnp.full(scales.shape, 8, jnp.uint8)
        return dequantize_w4(w_q, scales, zeros, group_size, dtype)
    if scales.ndim == 1:  # w8 per output channel
        w = q * scales.astype(jnp.float32)
    else:
        g = scales.shape[0]
        w = q.reshape(g, -1, q.shape[1]) * scales.astype(jnp.float32)[:, None]
        if mins is not None:
            w = w + mins.astype(jnp.float32)[:, None]
        w = w.reshape(q.shape)
    return w.astype(dtype)


def quantized_matmul_reference(x, w_q, scales, zeros=None, *, bits, group_size=None, mins=None):
    """Plain jnp: dequantize the whole weight, then `x @ w` in f32; output in x's dtype."""
    w = dequantize(w_q, scales, zeros, mins, bits=bits, group_size=group_size)
    out = jnp.dot(x.astype(jnp.float32), w, precision=lax.Precision.HIGHEST)
    return out.astype(x.dtype)


def quantized_matmul_xla(x, w_q, scales, zeros=None, *, bits, group_size=None, mins=None, out_dtype=None):
    """`quantized_matmul` in plain XLA (the CPU path): x [..., in] -> [..., out] in `out_dtype`
    (default x's dtype), accumulated in f32.

    A few rows (decode) multiply the int weight elementwise by each row of activations and reduce
    over each group, which XLA:CPU fuses into one pass over the int weight (a fused dequantize-and-dot
    runs far slower there; decode rates in docs/benchmarks.md); more rows (prefill) dequantize the
    weight once and run one dot.
    """
    _check_layout(x.shape[-1], w_q, scales, zeros, mins, bits, group_size)
    out_dtype = out_dtype or x.dtype
    lead, d_in, d_out = x.shape[:-1], x.shape[-1], w_q.shape[1]
    x2 = x.reshape(-1, d_in).astype(jnp.float32)
    if bits == 4 and mins is None:  # integer zero points: as float offsets, -zero * scale
        zeros = jnp.full(scales.shape, 8, jnp.uint8) if zeros is None else zeros
        mins = -zeros.astype(jnp.float32) * scales.astype(jnp.float32)
    if x2.shape[0] > 4:
        w = dequantize(w_q, scales, None, mins, bits=bits, group_size=group_size)
        out = jnp.dot(x2, w, preferred_element_type=jnp.float32)
        return out.astype(out_dtype).reshape(*lead, d_out)
    s = scales.astype(jnp.float32)
    s = s[None] if s.ndim == 1 else s  # w8 per output channel: one group of all rows
    g = s.shape[0]
    half = bits == 4
    if half:  # even and odd input rows apart, so the codes are never interleaved back
        codes = [(w_q & 0xF), (w_q >> 4)]
    else:
        codes = [w_q]
    codes = [c.astype(jnp.float32).reshape(g, -1, d_out) for c in codes]  # [g, rows per group, out]
    rows = []
    for r in range(x2.shape[0]):  # per row, without a leading row axis (XLA:CPU reduces that one poorly)
        xs = x2[r].reshape(g, -1, len(codes))  # [g, rows per group, 1 or 2 (even, odd)]
        part = sum(xs[:, :, j, None] * c for j, c in enumerate(codes)).sum(axis=1)  # [g, out]
        y = jnp.sum(part * s, axis=0)
        if mins is not None:
            y = y + jnp.dot(x2[r].reshape(g, -1).sum(axis=1), mins.astype(jnp.float32))
        rows.append(y)
    out = jnp.stack(rows)
    return out.astype(out_dtype).reshape(*lead, d_out)


def _check_layout(d_in, w_q, scales, zeros, mins, bits, group_size):
    """The shape contract of the module docstring; a ValueError naming what does not fit."""
    if bits not in (4, 8):
        raise ValueError(f"quantized_matmul: bits must be 4 or 8, got {bits}")
    if zeros is not None and mins is not None:
        raise ValueError("quantized_matmul: pass integer zeros or float mins, not both")
    rows = d_in // 2 if bits == 4 else d_in
    grouped = bits == 4 or group_size is not None
    gs = (group_size or 128) if grouped else None
    if w_q.ndim != 2 or w_q.shape[0] != rows or (grouped and (d_in % gs or gs % 2)):
        raise ValueError(
            f"quantized_matmul(bits={bits}): want w_q [{'in // 2' if bits == 4 else 'in'} = {rows}, out] with "
            f"group_size ({gs}) an even divisor of in ({d_in}); got w_q {w_q.shape}")
    want = (d_in // gs, w_q.shape[1]) if grouped else (w_q.shape[1],)
    if scales.shape != want:
        raise ValueError(f"quantized_matmul(bits={bits}): scales must be {want} for group_size {gs}, "
                         f"got {scales.shape}")
    for name, a in (("zeros", zeros), ("mins", mins)):
        if a is not None and a.shape != scales.shape:
            raise ValueError(f"quantized_matmul: {name} {a.shape} must match scales {scales.shape}")
    if bits == 8 and not grouped and mins is not None:
        raise ValueError("quantized_matmul: w8 mins need grouped scales (pass group_size)")


# ------------------------------------------------------------------------------ kernels


def _dot(a, b):
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _w8_kernel(x_ref, w_ref, s_ref, o_ref, *, block_k):
    # x_ref: [block_m, K]; w_ref: [K, block_n] int8; s_ref: [block_n]; o_ref: [block_m, block_n]
    x_dtype = x_ref.dtype

    def body(i, acc):
        start = pl.multiple_of(i * block_k, block_k)
        x = x_ref[:, pl.ds(start, block_k)]
        w = w_ref[pl.ds(start, block_k), :].astype(x_dtype)  # int8 is exact in bf16
        return acc + _dot(x, w)

    acc = lax.fori_loop(0, x_ref.shape[1] // block_k, body, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = (acc * s_ref[...].astype(jnp.float32)[None, :]).astype(o_ref.dtype)


def _w8_group_kernel(x_ref, w_ref, s_ref, o_ref, *, group):
    # x_ref: [block_m, K]; w_ref: [K, block_n] int8; s_ref: [K // group, block_n]
    x_dtype = x_ref.dtype

    def body(g, acc):
        start = pl.multiple_of(g * group, group)
        w = w_ref[pl.ds(start, group), :].astype(x_dtype)
        return acc + _dot(x_ref[:, pl.ds(start, group)], w) * s_ref[g, :].astype(jnp.float32)[None, :]

    acc = lax.fori_loop(0, s_ref.shape[0], body, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def _w4_kernel(xe_ref, xo_ref, w_ref, s_ref, z_ref, o_ref, *, half_group):
    # xe_ref / xo_ref: [block_m, K // 2], the even / odd input columns of x;
    # w_ref: [K // 2, block_n] uint8; s_ref, z_ref: [K // group_size, block_n]
    x_dtype = xe_ref.dtype

    def body(g, acc):
        start = pl.multiple_of(g * half_group, half_group)
        packed = w_ref[pl.ds(start, half_group), :].astype(jnp.int32)
        zero = z_ref[g, :].astype(jnp.int32)[None, :]
        low = ((packed & 0xF) - zero).astype(x_dtype)  # integers in -15..15: exact in bf16
        high = ((packed >> 4) - zero).astype(x_dtype)
        part = _dot(xe_ref[:, pl.ds(start, half_group)], low) + _dot(
            xo_ref[:, pl.ds(start, half_group)], high
        )
        return acc + part * s_ref[g, :].astype(jnp.float32)[None, :]

    acc = lax.fori_loop(0, s_ref.shape[0], body, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def _pick_block(n, preferred):
    """Largest power of two <= preferred (>= 16) dividing n, or None."""
    b = preferred
    while b >= 16:
        if n % b == 0:
            return b
        b //= 2
    return None


def quantized_matmul(
    x, w_q, scales, zeros=None, *, bits, group_size=None, interpret=None, block_m=None, block_n=None, mins=None
):
    """`x @ dequantize(w_q)` with dequantization fused; x [..., in] -> [..., out].

    bits=8: w_q [in, out] int8, scales [out] (or [in // group_size, out] with group_size).
    bits=4: w_q [in // 2, out] uint8 (see the module docstring for the nibble order), scales
    [in // group_size, out] and zeros of the same shape (None: symmetric, zero point 8);
    group_size defaults to 128. `mins` (either width, grouped): w = q * scale + min, the min
    term added as one small product of the activations' group sums.
    Accumulates in f32; returns x's dtype. interpret=None interprets off-GPU.
    """
    d_in = x.shape[-1]
    lead = x.shape[:-1]
    _check_layout(d_in, w_q, scales, zeros, mins, bits, group_size)
    if mins is not None:  # the kernel runs the scaled codes; the offsets are sum_g (sum of x's group g) * min_g
        gs = group_size or 128
        xsum = x.reshape(-1, d_in // gs, gs).astype(jnp.float32).sum(axis=-1)
        offset = jnp.dot(xsum, mins.astype(jnp.float32), preferred_element_type=jnp.float32)
        zero = jnp.zeros(scales.shape, jnp.uint8) if bits == 4 else None
        y = quantized_matmul(x, w_q, scales, zero, bits=bits, group_size=gs, interpret=interpret,
                             block_m=block_m, block_n=block_n)
        return (y.astype(jnp.float32) + offset.reshape(*lead, -1)).astype(x.dtype)
    x2 = x.reshape(-1, d_in)
    m = x2.shape[0]
    grouped_w8 = bits == 8 and group_size is not None
    if bits == 4:
        group_size = group_size or 128
        groups = d_in // group_size
        if zeros is None:
            zeros = jnp.full(scales.shape, 8, jnp.uint8)
    d_out = w_q.shape[1]
    interpret = resolve_interpret(interpret)

    block_m = block_m or block_size(m, 64)
    # Narrow column tiles at decode sizes give more programs than SMs; not yet tuned on H100.
    block_n = block_n or _pick_block(d_out, 64 if m <= 16 else 128) or 64
    m_pad, n_pad = round_up(m, block_m), round_up(d_out, block_n)
    x2 = jnp.pad(x2, ((0, m_pad - m), (0, 0)))
    if n_pad != d_out:  # slow path for odd widths: pads the weight on every call
        w_q = jnp.pad(w_q, ((0, 0), (0, n_pad - d_out)))
        scales = jnp.pad(scales, [(0, 0)] * (scales.ndim - 1) + [(0, n_pad - d_out)])
        if zeros is not None:
            zeros = jnp.pad(zeros, ((0, 0), (0, n_pad - d_out)))
    grid = (m_pad // block_m, n_pad // block_n)
    out_spec = pl.BlockSpec((block_m, block_n), lambda i, j: (i, j))
    common = dict(
        grid=grid,
        out_specs=out_spec,
        out_shape=jax.ShapeDtypeStruct((m_pad, n_pad), x.dtype),
        compiler_params=triton_params(num_warps=4, num_stages=3),
        interpret=interpret,
    )

    if grouped_w8:
        out = pl.pallas_call(
            functools.partial(_w8_group_kernel, group=group_size),
            in_specs=[
                pl.BlockSpec((block_m, d_in), lambda i, j: (i, 0)),
                pl.BlockSpec((d_in, block_n), lambda i, j: (0, j)),
                pl.BlockSpec((d_in // group_size, block_n), lambda i, j: (0, j)),
            ],
            name="w8a16_group_matmul",
            **common,
        )(x2, w_q, scales)
    elif bits == 8:
        block_k = _pick_block(d_in, 128)
        if block_k is None:  # slow path: in not a multiple of 16
            pad_k = round_up(d_in, 16) - d_in
            x2 = jnp.pad(x2, ((0, 0), (0, pad_k)))
            w_q = jnp.pad(w_q, ((0, pad_k), (0, 0)))
            block_k = 16
        k = x2.shape[1]
        out = pl.pallas_call(
            functools.partial(_w8_kernel, block_k=block_k),
            in_specs=[
                pl.BlockSpec((block_m, k), lambda i, j: (i, 0)),
                pl.BlockSpec((k, block_n), lambda i, j: (0, j)),
                pl.BlockSpec((block_n,), lambda i, j: (j,)),
            ],
            name="w8a16_matmul",
            **common,
        )(x2, w_q, scales)
    else:
        half = d_in // 2
        x_even, x_odd = x2[:, 0::2], x2[:, 1::2]  # x is small next to the weight
        out = pl.pallas_call(
            functools.partial(_w4_kernel, half_group=group_size // 2),
            in_specs=[
                pl.BlockSpec((block_m, half), lambda i, j: (i, 0)),
                pl.BlockSpec((block_m, half), lambda i, j: (i, 0)),
                pl.BlockSpec((half, block_n), lambda i, j: (0, j)),
                pl.BlockSpec((groups, block_n), lambda i, j: (0, j)),
                pl.BlockSpec((groups, block_n), lambda i, j: (0, j)),
            ],
            name="w4a16_matmul",
            **common,
        )(x_even, x_odd, w_q, scales, zeros)
    return out[:m, :d_out].reshape(*lead, d_out)
