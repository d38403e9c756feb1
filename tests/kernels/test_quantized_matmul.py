"""W8A16 / W4A16 matmul against the dequantize-then-dot reference; layout helpers."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intern_jax.testing import assert_close, fast_jit
from kernels.quantized_matmul import (
    dequantize_w4,
    dequantize_w8,
    pack_int4,
    quantize_w4,
    quantize_w8,
    quantized_matmul,
    quantized_matmul_reference,
    unpack_int4,
)


def tolerance(dtype):
    return 1e-5 if dtype == jnp.float32 else 1e-2  # bf16 output rounding


@settings(max_examples=10, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 24).map(lambda n: 16 * n),
    n=st.integers(8, 300),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_w8a16_matmul_matches_reference(m, k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.standard_normal((k, n)), dtype)
    x = jnp.asarray(rng.standard_normal((m, k)), dtype)

    @fast_jit
    def both(x, w):
        w_q, scales = quantize_w8(w)
        return (quantized_matmul(x, w_q, scales, bits=8), quantized_matmul_reference(x, w_q, scales, bits=8))

    got, want = both(x, w)
    assert got.shape == (m, n) and got.dtype == dtype
    assert_close(got, want, tolerance(dtype), "w8")


@settings(max_examples=10, deadline=None)
@given(
    m=st.integers(1, 40),
    group_size=st.sampled_from([32, 64, 128]),
    groups=st.integers(1, 4),
    n=st.integers(8, 300),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    symmetric=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_w4a16_matmul_matches_reference(m, group_size, groups, n, dtype, symmetric, seed):
    rng = np.random.default_rng(seed)
    k = group_size * groups
    w = jnp.asarray(rng.standard_normal((k, n)), dtype)
    x = jnp.asarray(rng.standard_normal((m, k)), dtype)

    @fast_jit
    def both(x, w):
        w_q, scales, zeros = quantize_w4(w, group_size)
        if symmetric:  # zero point 8: keep the codes, let the kernel supply the zeros
            zeros = None
        return (
            quantized_matmul(x, w_q, scales, zeros, bits=4, group_size=group_size),
            quantized_matmul_reference(x, w_q, scales, zeros, bits=4, group_size=group_size),
        )

    got, want = both(x, w)
    assert got.shape == (m, n) and got.dtype == dtype
    assert_close(got, want, tolerance(dtype), "w4")


def test_quantize_w4_round_trip_error_is_at_most_half_a_step():
    w = jnp.asarray(np.random.default_rng(1).standard_normal((256, 48)), jnp.float32)
    w_q, scales, zeros = fast_jit(quantize_w4, static_argnums=1)(w, 64)
    assert w_q.shape == (128, 48) and w_q.dtype == jnp.uint8
    assert scales.shape == zeros.shape == (4, 48)
    err = jnp.abs(dequantize_w4(w_q, scales, zeros, 64) - w)
    assert bool(jnp.all(err <= jnp.repeat(scales, 64, axis=0) * 0.5 + 1e-6))


def test_quantize_w8_round_trip_error_is_at_most_half_a_step():
    w = jnp.asarray(np.random.default_rng(2).standard_normal((64, 40)), jnp.float32)
    w_q, scales = fast_jit(quantize_w8)(w)
    assert w_q.dtype == jnp.int8 and scales.shape == (40,)
    assert bool(jnp.all(jnp.abs(dequantize_w8(w_q, scales) - w) <= scales * 0.5 + 1e-6))


def test_int4_packing_puts_even_rows_in_the_low_nibble():
    values = jnp.asarray(np.random.default_rng(3).integers(0, 16, (10, 6)), jnp.int32)
    packed = pack_int4(values)
    assert packed.shape == (5, 6)
    assert bool(jnp.all((packed & 0xF) == values[0::2]))
    assert bool(jnp.all((packed >> 4) == values[1::2]))
    assert bool(jnp.all(unpack_int4(packed) == values))


def test_quantized_matmul_keeps_leading_dims():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 3, 128)), jnp.float32)
    w_q, scales, zeros = fast_jit(quantize_w4, static_argnums=1)(
        jnp.asarray(rng.standard_normal((128, 32)), jnp.float32), 128
    )
    both = fast_jit(lambda *a: (quantized_matmul(*a, bits=4), quantized_matmul_reference(*a, bits=4)))
    got, want = both(x, w_q, scales, zeros)
    assert got.shape == (2, 3, 32)
    assert_close(got, want, 1e-5)


def test_quantized_matmul_rejects_bad_layouts():
    x = jnp.ones((2, 256))
    w_q = jnp.zeros((128, 32), jnp.uint8)
    scales, zeros = jnp.ones((2, 32)), jnp.zeros((2, 32), jnp.uint8)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        quantized_matmul(x, w_q, scales, zeros, bits=3)
    with pytest.raises(ValueError, match="group_size"):
        quantized_matmul(x, w_q, scales, zeros, bits=4, group_size=64)
    with pytest.raises(ValueError, match="multiple of an even group_size"):
        quantize_w4(jnp.ones((100, 8)), 128)
