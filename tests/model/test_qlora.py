"""NF4 / int8 block quantization: codebook, nearest-level rounding, error bounds, double quantization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from intern_jax.config import Execution
from intern_jax.model import internlm2
from intern_jax.model import qlora as Q
from intern_jax.testing import assert_close, fast_jit, random_params, tiny_config


def test_nf4_codebook_is_the_qlora_normal_quantile_construction():
    # QLoRA appendix: 8 positive and 7 negative quantiles of N(0,1) at offset 0.9677, plus zero, normalised.
    offset = 0.9677083
    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    levels = np.sort(np.concatenate([pos, neg, [0.0]]))
    np.testing.assert_allclose(Q.NF4_CODES, levels / np.abs(levels).max(), atol=1e-6)


def _weights(seed, shape):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 2.0)
    w.reshape(-1)[rng.integers(0, w.size, 5)] *= 20  # outliers
    return w


@pytest.mark.parametrize("shape, lead", [((3, 64, 40), 1), ((100, 7), 0)])  # 7 * 100: last block padded
def test_nf4_rounds_each_value_to_the_nearest_level_times_block_absmax(shape, lead):
    w = _weights(1, shape)
    q = Q.quantize(w, "nf4", lead_dims=lead)
    got = np.asarray(q.dequantize())
    assert got.shape == w.shape and q.codes.dtype == jnp.uint8
    # brute force: flatten per lead row, blocks of 64, nearest of the 16 levels
    rows = w.reshape(int(np.prod(shape[:lead])), -1)
    expect = np.empty_like(rows)
    for r, row in enumerate(rows):
        for s in range(0, row.size, 64):
            blk = row[s : s + 64]
            absmax = np.abs(blk).max()
            cand = Q.NF4_CODES[None, :] * absmax
            expect[r, s : s + 64] = cand[0, np.argmin(np.abs(blk[:, None] - cand), axis=1)]
    np.testing.assert_allclose(got.reshape(rows.shape), expect, rtol=1e-6, atol=1e-7)


def test_int8_error_is_at_most_half_a_step_of_block_absmax():
    w = _weights(2, (4, 96, 33))
    q = Q.quantize(w, "int8", lead_dims=1)
    got = np.asarray(q.dequantize())
    blocks = np.pad(w.reshape(4, -1), [(0, 0), (0, -w[0].size % 64)]).reshape(4, -1, 64)
    err = np.pad((got - w).reshape(4, -1), [(0, 0), (0, -w[0].size % 64)]).reshape(4, -1, 64)
    bound = np.abs(blocks).max(-1, keepdims=True) / 127 / 2
    assert (np.abs(err) <= bound * (1 + 1e-5) + 1e-7).all()
    assert np.abs(err).max() > 0.5 * bound.max() * 0.1  # it is really quantized


def test_double_quantized_scales_reconstruct_within_int8_step_and_codes_unchanged():
    w = _weights(3, (2, 256, 160))  # 640 blocks per layer: 3 second-level blocks, last one padded
    single = Q.quantize(w, "nf4", lead_dims=1)
    double = Q.quantize(w, "nf4", lead_dims=1, double_quant=True)
    np.testing.assert_array_equal(double.codes, single.codes)
    absmax, rebuilt = np.asarray(single.absmax()), np.asarray(double.absmax())
    centred = absmax - absmax.mean(-1, keepdims=True)
    padded = np.pad(centred, [(0, 0), (0, -centred.shape[1] % 256)]).reshape(2, -1, 256)
    step = np.repeat(np.abs(padded).max(-1) / 127 / 2, 256, axis=1)[:, : absmax.shape[1]]
    assert (np.abs(rebuilt - absmax) <= step * (1 + 1e-4) + 1e-7).all()
    codes_bytes = single.codes.size
    assert double.nbytes() - codes_bytes < 0.35 * (single.nbytes() - codes_bytes)  # scales shrink ~4x
    assert double.scale_codes.dtype == jnp.int8


def test_quantized_model_runs_under_scan_and_matches_dequantized_params():
    cfg, bf16 = tiny_config(), Execution(dtype="bfloat16")
    params = random_params(cfg, seed=4)
    quantized = Q.quantize_params(params, "nf4", double_quant=True)
    assert isinstance(quantized["layers"]["w1"], Q.QuantizedWeight)
    assert not isinstance(quantized["norm"], Q.QuantizedWeight)
    batch = {"tokens": jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 9)), jnp.int32)}
    forward = fast_jit(lambda p: internlm2.forward(p, batch, cfg, execution=bf16)[0])
    assert_close(forward(quantized), forward(Q.dequantize_params(quantized)), 1e-6, "on-the-fly dequantization")
    reference = forward(params)
    err = np.abs(np.asarray(forward(quantized) - reference)).max()
    assert 0 < err < 0.25 * np.abs(np.asarray(reference)).max()


def test_abstract_quantization_allocates_nothing_and_matches_shapes():
    spec = Q.abstract_quantized((32, 4096, 14336), "nf4", lead_dims=1, double_quant=True)
    assert isinstance(spec.codes, jax.ShapeDtypeStruct) and spec.codes.shape == (32, 4096 * 14336 // 64, 32)
    assert spec.shape == (32, 4096, 14336)


def test_bad_quantization_kind_is_explained():
    with pytest.raises(ValueError, match="not supported"):
        Q.quantize(np.ones((64,), np.float32), "int4")
