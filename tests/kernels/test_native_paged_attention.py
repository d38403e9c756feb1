"""The native paged attention (kernels/cpu/paged_attention.cc) against a float64 numpy reference that
gathers each query's keys by hand, and the KV cache's use of it against its XLA path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.inference import Decoder, PagedLayout, SamplingParams
from intern_jax.model.kv_cache import native_attention_usable
from intern_jax.testing import random_params, tiny_config
from kernels import cpu as native

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the native kernel is the CPU path")


@pytest.fixture(scope="module")
def built():
    if not native.available():
        pytest.fail(f"the native kernels did not build here: {native._state.get('error', native.ENV + '=0')}")


def reference(q, k, v, tables, rows, slots, layer):
    """Per query: its sequence's keys at slots 0..slot (below the table's reach), gathered page by page."""
    n, h, d = q.shape
    kvh, num_pages, page = k.shape[1], k.shape[2], k.shape[3]
    g = h // kvh
    out = np.zeros((n, h, d))
    for i in range(n):
        r, last = rows[i], min(slots[i], tables.shape[1] * page - 1)
        if not 0 <= r < tables.shape[0] or last < 0:
            continue
        for s in range(last + 1):
            assert 0 <= tables[r, s // page] < num_pages
        ids = [np.clip(tables[r, s // page], 0, num_pages - 1) for s in range(last + 1)]
        for head in range(h):
            keys = np.stack([k[layer, head // g, p, s % page] for s, p in enumerate(ids)]).astype(np.float64)
            values = np.stack([v[layer, head // g, p, s % page] for s, p in enumerate(ids)]).astype(np.float64)
            scores = keys @ q[i, head].astype(np.float64) / np.sqrt(d)
            probs = np.exp(scores - scores.max())
            out[i, head] = probs @ values / probs.sum()
    return out


def test_native_paged_attention_matches_a_float64_gather_reference(built, rng):
    for _ in range(3):
        layers, kvh, g = int(rng.integers(1, 4)), int(rng.choice([1, 2])), int(rng.choice([1, 3]))
        num_pages, page, d = int(rng.integers(6, 12)), int(rng.choice([1, 4, 8])), int(rng.choice([8, 16]))
        seqs, width = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        k, v = (rng.standard_normal((layers, kvh, num_pages, page, d)).astype(np.float32) for _ in range(2))
        tables = np.stack([rng.permutation(num_pages)[:width] for _ in range(seqs)]).astype(np.int32)
        n = int(rng.integers(1, 12))
        rows = rng.integers(0, seqs, n).astype(np.int32)
        slots = rng.integers(0, width * page + 3, n).astype(np.int32)  # some past the table: clamped to it
        rows[0], slots[-1] = seqs, -1  # a row outside the tables and a query with no keys: zeros
        q = rng.standard_normal((n, kvh * g, d)).astype(np.float32)
        layer = int(rng.integers(0, layers))
        got = np.asarray(jax.jit(native.paged_attention, static_argnames="layer")(
            q, k, v, tables, rows, slots, layer=layer))
        want = reference(q, k, v, tables, rows, slots, layer)
        assert got.shape == q.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
        assert not got[0].any() and not got[-1].any()


def test_native_paged_attention_rejects_mismatched_shapes_by_name(built):
    q, pages = jnp.ones((2, 4, 8)), jnp.ones((1, 2, 3, 4, 8))
    with pytest.raises(ValueError, match="do not fit"):
        native.paged_attention(q, pages[..., :4], pages[..., :4], jnp.zeros((1, 1)), [0, 0], [0, 0], layer=0)
    with pytest.raises(ValueError, match="layer 1"):
        native.paged_attention(q, pages, pages, jnp.zeros((1, 1)), [0, 0], [0, 0], layer=1)


def _decode(params, cfg, prompts):
    """A paged batch's greedy tokens and log-probabilities, and the text of every program it compiled."""
    dec = Decoder(params, cfg)
    batch = dec.new_batch(3, paged=PagedLayout(num_pages=12, page_size=4, pages_per_slot=4))
    outs = [batch.insert([0, 1, 2], prompts, [SamplingParams(max_new_tokens=6)] * 3)]
    outs += [batch.step() for _ in range(5)]
    hlo = [exe.as_text() for exe in dec._executables.values()]
    return batch.cache.native, np.stack([o.tokens for o in outs]), np.stack([o.logprobs for o in outs]), hlo


def test_a_paged_batch_attends_natively_on_cpu_and_decodes_as_the_xla_gather(built, monkeypatch):
    """Float32 pages on one CPU device go to the kernel (its call is in every compiled program); with
    the native kernels off they are gathered for XLA; both give the same tokens and log-probabilities."""
    cfg = tiny_config(num_layers=2)
    params = random_params(cfg, 3, scale=0.2)
    prompts = [[5, 17, 3, 88, 41, 9, 60, 2, 7], [12, 7], [33, 2, 71, 19]]
    assert native_attention_usable(jnp.float32)
    assert not native_attention_usable(jnp.float32, int8=True) and not native_attention_usable(jnp.bfloat16)
    assert not native_attention_usable(jnp.float32, devices=2)
    on, tokens, logprobs, hlo = _decode(params, cfg, prompts)
    assert on and hlo and all(native.ATTENTION_TARGET in text for text in hlo)
    monkeypatch.setenv(native.ENV, "0")
    assert not native_attention_usable(jnp.float32)
    on, xla_tokens, xla_logprobs, hlo = _decode(params, cfg, prompts)
    assert not on and hlo and not any(native.ATTENTION_TARGET in text for text in hlo)
    np.testing.assert_array_equal(tokens, xla_tokens)
    np.testing.assert_allclose(logprobs, xla_logprobs, atol=1e-5)
