"""Paged decode / chunked-prefill attention against the jnp references, interpret mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intern_jax.testing import assert_close, fast_jit
from kernels.flash_attention import flash_attention
from kernels.paged_attention import (
    dequantize_kv_int8,
    paged_decode_attention,
    paged_decode_reference,
    paged_prefill_attention,
    paged_prefill_reference,
    quantize_kv_int8,
)


def make_cache(rng, batch, kv_heads, head_dim, page_size, pages_per_seq, dtype, int8):
    """Random pages, shuffled block tables, ragged lengths incl. 0, junk in unused slots."""
    num_pages = batch * pages_per_seq + 3
    shape = (kv_heads, num_pages, page_size, head_dim)
    k = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal(shape).astype(np.float32)
    tables = rng.permutation(num_pages)[: batch * pages_per_seq].reshape(batch, -1)
    lengths = rng.integers(0, pages_per_seq * page_size + 1, size=batch)
    lengths[rng.integers(batch)] = rng.integers(1, pages_per_seq * page_size + 1)
    unused = np.arange(pages_per_seq)[None, :] >= -(-lengths[:, None] // page_size)
    tables = np.where(unused, rng.choice([-1, num_pages + 7], size=tables.shape), tables)
    scales = {}
    if int8:
        k, k_scales = quantize_kv_int8(jnp.asarray(k))
        v, v_scales = quantize_kv_int8(jnp.asarray(v))
        scales = dict(k_scales=k_scales, v_scales=v_scales)
    else:
        k, v = jnp.asarray(k, dtype), jnp.asarray(v, dtype)
    return k, v, jnp.asarray(tables, jnp.int32), jnp.asarray(lengths, jnp.int32), scales


@st.composite
def cache_cases(draw):
    return dict(
        batch=draw(st.integers(1, 4)),
        kv_heads=draw(st.sampled_from([1, 2])),
        groups=draw(st.sampled_from([1, 2, 4])),
        head_dim=draw(st.sampled_from([64, 128])),
        page_size=draw(st.sampled_from([16, 32])),
        pages_per_seq=draw(st.integers(1, 6)),
        dtype=draw(st.sampled_from([jnp.float32, jnp.bfloat16])),
        int8=draw(st.booleans()),
        num_splits=draw(st.sampled_from([None, 1, 2, 3])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def tolerance(case):
    return 1e-4 if case["dtype"] == jnp.float32 else 3e-2


def assert_rows_close(actual, expected, case, name):
    """Per output row (the last axis): relative L2 error within 1e-4 (f32) or 2e-2 (bf16), rows that are not 0."""
    rel = 1e-4 if case["dtype"] == jnp.float32 else 2e-2
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    norms = np.linalg.norm(expected, axis=-1)
    rows = norms > 0
    errors = np.linalg.norm(actual - expected, axis=-1)[rows] / norms[rows]
    assert errors.size == 0 or errors.max() <= rel, f"{name}: largest per-row relative error {errors.max():.3g} > {rel}"


@settings(max_examples=10, deadline=None)
@given(cache_cases())
def test_paged_decode_matches_reference(case):
    rng = np.random.default_rng(case["seed"])
    k, v, tables, lengths, scales = make_cache(
        rng,
        case["batch"],
        case["kv_heads"],
        case["head_dim"],
        case["page_size"],
        case["pages_per_seq"],
        case["dtype"],
        case["int8"],
    )
    heads = case["kv_heads"] * case["groups"]
    q = jnp.asarray(rng.standard_normal((case["batch"], heads, case["head_dim"])), case["dtype"])
    got = fast_jit(lambda *a, **kw: paged_decode_attention(*a, num_splits=case["num_splits"], **kw))(
        q, k, v, tables, lengths, **scales
    )
    want = fast_jit(paged_decode_reference)(q.astype(jnp.float32), k, v, tables, lengths, **scales)
    assert got.shape == q.shape and got.dtype == q.dtype
    assert_close(got, want, tolerance(case), "decode")
    assert_rows_close(got, want, case, "decode")
    assert np.all(np.asarray(got)[np.asarray(lengths) == 0] == 0)


@settings(max_examples=8, deadline=None)
@given(cache_cases(), st.integers(1, 24), st.data())
def test_paged_prefill_matches_reference(case, chunk, data):
    rng = np.random.default_rng(case["seed"])
    k, v, tables, lengths, scales = make_cache(
        rng,
        case["batch"],
        case["kv_heads"],
        case["head_dim"],
        case["page_size"],
        case["pages_per_seq"],
        case["dtype"],
        case["int8"],
    )
    limit = np.minimum(np.asarray(lengths), chunk)
    q_lengths = jnp.asarray([data.draw(st.integers(0, int(n))) for n in limit], jnp.int32)
    heads = case["kv_heads"] * case["groups"]
    q = jnp.asarray(rng.standard_normal((case["batch"], chunk, heads, case["head_dim"])), case["dtype"])
    got = fast_jit(lambda *a, **kw: paged_prefill_attention(*a, num_splits=case["num_splits"], **kw))(
        q, k, v, tables, lengths, q_lengths=q_lengths, **scales
    )
    want = fast_jit(paged_prefill_reference)(
        q.astype(jnp.float32), k, v, tables, lengths, q_lengths=q_lengths, **scales
    )
    assert got.shape == q.shape and got.dtype == q.dtype
    assert_close(got, want, tolerance(case), "prefill")
    assert_rows_close(got, want, case, "prefill")
    invalid = np.arange(chunk)[None, :] >= np.asarray(q_lengths)[:, None]
    assert np.all(np.asarray(got)[invalid] == 0)


def test_paged_prefill_over_contiguous_pages_matches_flash_attention():
    """Pages in order 0..n hold one dense sequence: paged == dense end-aligned causal."""
    rng = np.random.default_rng(3)
    kv_heads, groups, d, page, seq, chunk = 2, 2, 64, 16, 45, 13
    k = rng.standard_normal((1, seq, kv_heads, d)).astype(np.float32)
    v = rng.standard_normal((1, seq, kv_heads, d)).astype(np.float32)
    q = jnp.asarray(rng.standard_normal((1, chunk, kv_heads * groups, d)), jnp.float32)
    pad = 3 * page - seq
    to_pages = lambda x: jnp.asarray(
        np.pad(x[0], ((0, pad), (0, 0), (0, 0))).reshape(3, page, kv_heads, d).transpose(2, 0, 1, 3)
    )

    @fast_jit
    def both(q, k, v, k_pages, v_pages):
        paged = paged_prefill_attention(
            q, k_pages, v_pages, jnp.asarray([[0, 1, 2]]), jnp.asarray([seq]), num_splits=2
        )
        dense = flash_attention(q, k, v, causal=True, block_q=16, block_k=16)
        return paged, dense

    paged, dense = both(q, jnp.asarray(k), jnp.asarray(v), to_pages(k), to_pages(v))
    assert_close(paged, dense, 1e-5, "paged vs dense")


def test_quantize_kv_int8_error_is_at_most_half_a_step():
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 5, 16, 64)), jnp.float32)
    values, scales = quantize_kv_int8(x)
    assert values.dtype == jnp.int8 and scales.shape == x.shape[:-1]
    err = jnp.abs(dequantize_kv_int8(values, scales) - x)
    assert bool(jnp.all(err <= scales[..., None] * 0.5 + 1e-6))


def test_paged_attention_rejects_bad_inputs():
    q = jnp.ones((2, 4, 64))
    pages = jnp.ones((2, 6, 16, 64))
    tables = jnp.zeros((2, 3), jnp.int32)
    lengths = jnp.ones((2,), jnp.int32)
    with pytest.raises(ValueError, match="need k_scales"):
        paged_decode_attention(q, pages.astype(jnp.int8), pages.astype(jnp.int8), tables, lengths)
    with pytest.raises(ValueError, match="block_tables"):
        paged_decode_attention(q, pages, pages, tables[:1], lengths)
    with pytest.raises(ValueError, match="head_dim"):
        paged_decode_attention(jnp.ones((2, 4, 32)), pages, pages, tables, lengths)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_paged_prefill_reference_matches_jax_nn_dot_product_attention(dtype, rng, seed):
    """The paged reference against jax.nn.dot_product_attention on keys and values gathered here, page by
    page, from the block tables: ragged lengths, a chunk of q_lengths new queries at the end of each
    sequence, grouped-query heads. Relative error per output row."""
    batch, kv_heads, groups, d, page, pages_per_seq, chunk = 3, 2, 3, 64, 16, 4, 9
    k, v, tables, lengths, _ = make_cache(rng, batch, kv_heads, d, page, pages_per_seq, jnp.dtype(dtype), False)
    lengths = np.asarray(lengths)
    q_lengths = np.array([rng.integers(min(n, 1), min(n, chunk) + 1) for n in lengths])  # >= 1 where n > 0
    q = jnp.asarray(rng.standard_normal((batch, chunk, kv_heads * groups, d)), dtype)
    ours = fast_jit(paged_prefill_reference)(q, k, v, tables, jnp.asarray(lengths), q_lengths=jnp.asarray(q_lengths))

    span = pages_per_seq * page
    dense_k, dense_v = (np.zeros((batch, span, kv_heads, d), np.float32) for _ in range(2))
    for b in range(batch):
        for slot in range(-(-lengths[b] // page)):  # the pages this sequence fills
            rows = slice(slot * page, (slot + 1) * page)
            dense_k[b, rows] = np.asarray(k[:, tables[b, slot]], np.float32).transpose(1, 0, 2)
            dense_v[b, rows] = np.asarray(v[:, tables[b, slot]], np.float32).transpose(1, 0, 2)
    query_pos = lengths[:, None] - q_lengths[:, None] + np.arange(chunk)[None]  # [batch, chunk]
    visible = (np.arange(span)[None, None] <= query_pos[:, :, None]) & (np.arange(span)[None, None] < lengths[:, None,
                                                                                                             None])
    visible &= (np.arange(chunk)[None] < q_lengths[:, None])[:, :, None]
    theirs = jax.nn.dot_product_attention(jnp.asarray(q, jnp.float32), jnp.asarray(dense_k), jnp.asarray(dense_v),
                                          mask=jnp.asarray(visible)[:, None], implementation="xla")
    rows = visible.any(-1)
    ours = np.asarray(ours, np.float32)
    assert rows.sum() > 0 and np.all(ours[~rows] == 0), f"seed {seed}"
    theirs = np.asarray(theirs)[rows]
    error = float((np.linalg.norm(ours[rows] - theirs, axis=-1) / np.linalg.norm(theirs, axis=-1)).max())
    bound = 2e-6 if dtype == "float32" else 8e-3
    assert error <= bound, f"seed {seed}: {dtype}: largest per-row relative error {error:.3g} > {bound}"
