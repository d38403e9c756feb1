"""flash_attention against attention_reference: outputs and dq/dk/dv, interpret mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intern_jax.testing import assert_close, fast_jit
from kernels.flash_attention import attention_reference, flash_attention


# Interpret-mode kernels are large XLA programs; CPU backend optimization buys nothing
# at these sizes and costs most of the compile time.
def random_segments(rng, batch, seq, with_padding):
    """Sorted packed-document ids 1..3 per row, optionally 0 (padding) at the tail."""
    seg = np.sort(rng.integers(1, 4, size=(batch, seq)), axis=1)
    if with_padding:
        for b in range(batch):
            seg[b, rng.integers(seq // 2, seq + 1) :] = 0
    return jnp.asarray(seg, jnp.int32)


def assert_rows_close(actual, expected, rel, name=""):
    """Per output row (the last axis): |actual - expected| <= rel |expected| (L2), over rows that are not 0."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    norms = np.linalg.norm(expected, axis=-1)
    rows = norms > 0
    errors = np.linalg.norm(actual - expected, axis=-1)[rows] / norms[rows]
    assert errors.size == 0 or errors.max() <= rel, f"{name}: largest per-row relative error {errors.max():.3g} > {rel}"


def run_both(q, k, v, do, **kw):
    """(out, dq, dk, dv) of the kernel (in q's dtype) and of the f32 reference."""

    def kernel_vjp(q, k, v, do):
        out, vjp = jax.vjp(lambda q, k, v: flash_attention(q, k, v, **kw), q, k, v)
        return (out,) + vjp(do)

    ref_kw = {key: val for key, val in kw.items() if key not in ("block_q", "block_k")}

    def reference_vjp(q, k, v, do):
        f32 = lambda x: x.astype(jnp.float32)
        out, vjp = jax.vjp(lambda q, k, v: attention_reference(q, k, v, **ref_kw), f32(q), f32(k), f32(v))
        return (out,) + vjp(f32(do))

    return fast_jit(kernel_vjp)(q, k, v, do), fast_jit(reference_vjp)(q, k, v, do)


@st.composite
def attention_cases(draw):
    packed = draw(st.booleans())
    seq_q = draw(st.integers(1, 160))
    seq_kv = seq_q if packed else draw(st.integers(1, 160))
    return dict(
        batch=draw(st.integers(1, 2)),
        seq_q=seq_q,
        seq_kv=seq_kv,
        kv_heads=draw(st.sampled_from([1, 2])),
        groups=draw(st.sampled_from([1, 2, 3])),
        head_dim=draw(st.sampled_from([64, 128])),
        dtype=draw(st.sampled_from([jnp.float32, jnp.bfloat16])),
        causal=draw(st.booleans()),
        packed=packed,
        padding=draw(st.booleans()),
        block=draw(st.sampled_from([None, 16, 32])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=10, deadline=None)
@given(attention_cases())
def test_flash_attention_and_grads_match_reference(case):
    rng = np.random.default_rng(case["seed"])
    batch, heads = case["batch"], case["kv_heads"] * case["groups"]
    dtype, d = case["dtype"], case["head_dim"]
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
    q = normal(batch, case["seq_q"], heads, d)
    k = normal(batch, case["seq_kv"], case["kv_heads"], d)
    v = normal(batch, case["seq_kv"], case["kv_heads"], d)
    do = normal(batch, case["seq_q"], heads, d)
    segment_ids = None
    if case["packed"]:
        segment_ids = random_segments(rng, batch, case["seq_q"], case["padding"])
    got, want = run_both(
        q,
        k,
        v,
        do,
        segment_ids=segment_ids,
        causal=case["causal"],
        block_q=case["block"],
        block_k=case["block"],
    )
    assert got[0].dtype == dtype
    tol = 2e-4 if dtype == jnp.float32 else 4e-2
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert_close(a, e, tol, name)
    # and every output row on its own scale, so rows far smaller than the largest are held to account too
    assert_rows_close(got[0], want[0], 1e-4 if dtype == jnp.float32 else 2e-2, "out")


def test_padding_rows_give_zero_output_and_zero_grads():
    rng = np.random.default_rng(0)
    q, k, v, do = (jnp.asarray(rng.standard_normal((2, 37, 4, 64)), jnp.float32) for _ in range(4))
    k, v = k[:, :, :2], v[:, :, :2]
    seg = np.ones((2, 37), np.int32)
    seg[0, 20:] = 0  # tail padding
    seg[1, :5] = 0  # head padding
    seg[1, 5:21] = 2
    seg = jnp.asarray(seg)
    (out, dq, dk, dv), (r_out, r_dq, r_dk, r_dv) = run_both(
        q, k, v, do, segment_ids=seg, block_q=16, block_k=16
    )
    pad = np.asarray(seg == 0)
    for x in (out, dq):
        assert np.all(np.asarray(x)[pad] == 0)
    for x in (dk, dv):
        assert np.all(np.asarray(x)[pad] == 0)
    for name, a, e in zip(
        ("out", "dq", "dk", "dv"), (out, dq, dk, dv), (r_out, r_dq, r_dk, r_dv), strict=True
    ):
        assert_close(a, e, 2e-4, name)


def test_causal_with_longer_kv_aligns_query_ends():
    """seq_q < seq_kv: the last query sees every key, the first sees seq_kv - seq_q + 1."""
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((1, 5, 2, 64)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 40, 2, 64)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((1, 40, 2, 64)), jnp.float32)

    @fast_jit
    def outputs(q, k, v):
        out = flash_attention(q, k, v, causal=True, block_q=16, block_k=16)
        full = flash_attention(q[:, -1:], k, v, causal=False, block_q=16, block_k=16)
        first = flash_attention(q[:, :1], k[:, :36], v[:, :36], causal=False)
        return out, full, first

    out, full, first = outputs(q, k, v)
    assert_close(out[:, -1:], full, 1e-5, "last query")
    assert_close(out[:, :1], first, 1e-5, "first query")


def test_separate_query_and_key_segments_match_reference(rng):
    """kv_segment_ids [batch, seq_kv] with segment_ids [batch, seq_q] (seq_q < seq_kv, causal,
    keys of segment 0 hidden): outputs and gradients equal the reference's."""
    q = jnp.asarray(rng.standard_normal((2, 24, 4, 64)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 56, 2, 64)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 56, 2, 64)), jnp.float32)
    do = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    kv_seg = np.array(random_segments(rng, 2, 56, with_padding=False))
    kv_seg[:, :9] = 0  # keys nobody may see, as rotated-in later keys are under a sequence split
    seg = kv_seg[:, -24:]
    got, want = run_both(q, k, v, do, segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(kv_seg),
                         causal=True, block_q=16, block_k=16)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert_close(a, b, 1e-4, name)
    assert float(jnp.abs(got[2][:, :9]).max()) == 0.0  # hidden keys get no gradient


def test_flash_attention_rejects_bad_shapes():
    q = jnp.ones((1, 8, 3, 64))
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        flash_attention(q, jnp.ones((1, 8, 2, 64)), jnp.ones((1, 8, 2, 64)))
    with pytest.raises(ValueError, match="segment_ids"):
        flash_attention(
            q, jnp.ones((1, 9, 1, 64)), jnp.ones((1, 9, 1, 64)), segment_ids=jnp.ones((1, 8), jnp.int32)
        )
    with pytest.raises(ValueError, match="kv_segment_ids"):
        flash_attention(q, jnp.ones((1, 9, 1, 64)), jnp.ones((1, 9, 1, 64)), kv_segment_ids=jnp.ones((1, 9), jnp.int32))


# ------------------------------------------------------------------ the reference against jax.nn


def row_relative_error(ours, theirs):
    """Per output row ([..., head_dim] vectors): |ours - theirs| / |theirs| (L2), the largest over rows."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float((np.linalg.norm(ours - theirs, axis=-1) / np.linalg.norm(theirs, axis=-1)).max())


def jax_nn_attention(q, k, v, visible):
    """jax.nn.dot_product_attention (XLA) in float32 with an explicit mask [batch, seq_q, seq_kv]."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return jax.nn.dot_product_attention(f32(q), f32(k), f32(v), mask=jnp.asarray(visible)[:, None],
                                        implementation="xla")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["causal_longer_kv", "packed_causal", "packed_bidirectional"])
def test_attention_reference_matches_jax_nn_dot_product_attention(layout, dtype, rng, seed):
    """The kernels' jnp reference against jax.nn.dot_product_attention, grouped-query (6 heads over 2),
    end-aligned causal mask, packed segments with padding. The mask is built here from its definition.
    bf16 inputs: the reference (f32 accumulation, bf16 output) against jax.nn on the same values in f32,
    relative error per row, so small rows count as much as large ones."""
    batch, heads, kv_heads, d = 2, 6, 2, 64
    seq_q, seq_kv = (13, 40) if layout == "causal_longer_kv" else (37, 37)
    q = jnp.asarray(rng.standard_normal((batch, seq_q, heads, d)), dtype)
    k = jnp.asarray(rng.standard_normal((batch, seq_kv, kv_heads, d)), dtype)
    v = jnp.asarray(rng.standard_normal((batch, seq_kv, kv_heads, d)), dtype)
    causal = layout != "packed_bidirectional"
    segment_ids = None
    visible = np.ones((batch, seq_q, seq_kv), bool)
    if causal:  # query i sits at key position seq_kv - seq_q + i
        visible &= np.arange(seq_kv)[None, None, :] <= (np.arange(seq_q) + seq_kv - seq_q)[None, :, None]
    if layout != "causal_longer_kv":
        seg = np.asarray(random_segments(rng, batch, seq_q, with_padding=True))
        visible &= (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
        segment_ids = jnp.asarray(seg)
    ours = fast_jit(lambda q, k, v: attention_reference(q, k, v, segment_ids=segment_ids, causal=causal))(q, k, v)
    theirs = jax_nn_attention(q, k, v, visible)
    assert ours.dtype == q.dtype
    rows = visible.any(-1)  # [batch, seq_q]; a query that sees no key gives 0 in ours
    assert rows.any() and np.all(np.asarray(ours, np.float32)[~rows] == 0), f"seed {seed}"
    error = row_relative_error(np.asarray(ours, np.float32)[rows], np.asarray(theirs)[rows])
    bound = 2e-6 if dtype == "float32" else 8e-3  # bf16 output: half an ulp is 2**-9 ~ 2e-3 of each value
    assert error <= bound, f"seed {seed}: {layout} {dtype}: largest per-row relative error {error:.3g} > {bound}"
