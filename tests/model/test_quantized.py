"""Packed 4-/8-bit serving weights: layout against a numpy reference, products, the model, AWQ, GGUF kept packed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.inference import Decoder
from intern_jax.inference.sampling import SamplingParams
from intern_jax.model import awq, internlm2, quantized
from intern_jax.testing import random_params, tiny_config
from kernels.quantized_matmul import quantized_matmul


def numpy_codes(w, bits, group):
    """Independent reference: per group of ``group`` input rows of ``w [in, out]``, the codes, scales, mins."""
    g = w.astype(np.float32).reshape(-1, group, w.shape[1])
    if bits == 8:
        scale = np.abs(g).max(1) / np.float32(127)
        return np.round(g / scale[:, None]).reshape(w.shape), scale, None
    lo, hi = g.min(1), g.max(1)
    scale = (hi - lo) / np.float32(15)
    return np.clip(np.round((g - lo[:, None]) / scale[:, None]), 0, 15).reshape(w.shape), scale, lo


def numpy_unpack(packed):
    """``[in // 2, out]`` bytes -> ``[in, out]`` codes: row 2i from the low nibble, 2i + 1 from the high one."""
    out = np.empty((packed.shape[0] * 2, packed.shape[1]), np.int64)
    out[0::2], out[1::2] = packed & 0xF, packed >> 4
    return out


def numpy_dequantize(w: quantized.PackedWeight):
    q = numpy_unpack(np.asarray(w.q)) if w.bits == 4 else np.asarray(w.q, np.int64)
    s = np.repeat(np.asarray(w.scales, np.float64), w.group_size, axis=-2)
    m = 0.0 if w.mins is None else np.repeat(np.asarray(w.mins, np.float64), w.group_size, axis=-2)
    return q * s + m


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_matches_an_independent_numpy_reference(bits, rng):
    group = int(rng.choice([16, 32]))
    w = rng.standard_normal((96, 40)).astype(np.float32)
    packed = quantized.quantize(w, bits, group)
    want_q, want_s, want_m = numpy_codes(w, bits, group)
    q = numpy_unpack(np.asarray(packed.q)) if bits == 4 else np.asarray(packed.q)
    assert packed.q.shape == ((48 if bits == 4 else 96), 40)
    np.testing.assert_allclose(np.asarray(packed.scales), want_s, rtol=1e-6)
    if bits == 4:
        np.testing.assert_allclose(np.asarray(packed.mins), want_m, rtol=1e-6)
        ratio = (w.reshape(-1, group, 40) - want_m[:, None]) / want_s[:, None]
    else:
        ratio = w.reshape(-1, group, 40) / want_s[:, None]
    near_tie = np.abs(np.abs(ratio - np.floor(ratio)) - 0.5).reshape(w.shape) < 1e-4
    assert np.array_equal(q[~near_tie], want_q[~near_tie])
    step = np.repeat(want_s, group, axis=0)
    assert np.all(np.abs(numpy_dequantize(packed) - w) <= 0.5 * step + 1e-6)
    np.testing.assert_allclose(np.asarray(packed.dequantize()), numpy_dequantize(packed), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [1, 7])  # decode (elementwise-reduce path) and prefill (dequantize + dot)
def test_packed_projection_equals_float_matmul_with_dequantized_weight(bits, rows, rng):
    w = rng.standard_normal((2, 64, 3, 8)).astype(np.float32)  # [layers, in, *out]
    packed = quantized.quantize(w, bits, 32, lead_dims=1)
    one = jax.tree.map(lambda a: a[1], packed)  # one layer, as the model's scan slices it
    x = rng.standard_normal((rows, 64)).astype(np.float32)
    want = (x.astype(np.float64) @ numpy_dequantize(one)).reshape(rows, 3, 8)
    got = np.asarray(jax.jit(lambda x, w: w.matmul(x))(x, one))
    assert got.shape == (rows, 3, 8)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    if rows == 1:
        return
    # the GPU path (the Pallas kernel, interpreted here) gives the same product
    pallas = quantized_matmul(jnp.asarray(x), one.q, one.scales, bits=bits, group_size=32, mins=one.mins,
                              interpret=True)
    assert np.abs(np.asarray(pallas).reshape(want.shape) - want).max() <= 1e-5 * np.abs(want).max()


def test_w8_model_logits_close_and_decoder_greedy_tokens_equal_the_float_model(seed):
    cfg = tiny_config(num_layers=1)
    params = random_params(cfg, seed % 1000, scale=0.1)
    packed, qcfg = quantized.quantize_params(params, cfg, 8, 32, head=True)
    assert quantized.param_bytes(packed) < 0.5 * quantized.param_bytes(params)
    prompt = [int(t) for t in np.random.default_rng(seed).integers(0, cfg.vocab_size, 6)]
    batch = Decoder(packed, qcfg).new_batch(1, 32)
    first = batch.insert([0], [prompt], [SamplingParams(max_new_tokens=8)])
    got = [int(first.tokens[0])] + [int(t) for t in batch.run(7).tokens[0]]
    # the float model, teacher-forced on the W8 decoder's tokens: its logits, and its greedy choice at each step
    sequence = jnp.asarray([prompt + got], jnp.int32)
    want = np.asarray(internlm2.forward(params, {"tokens": sequence}, cfg)[0][0])
    ours = np.asarray(jax.jit(internlm2.forward, static_argnums=2)(packed, {"tokens": sequence}, qcfg)[0][0])
    error = float(np.abs(ours - want).max())
    assert np.linalg.norm(ours - want) <= 0.03 * np.linalg.norm(want)  # int8 rounding: ~1.5% here
    steps = want[len(prompt) - 1: -1]
    greedy = steps.argmax(-1)
    for i, (token, row) in enumerate(zip(got, steps)):
        if token != greedy[i]:  # allowed only where the float model's top two are within the W8 error
            top2 = np.sort(row)[-2:]
            assert top2[1] - top2[0] < 2 * error, (i, got, list(greedy), error)
            break


def test_awq_scales_reconstruct_salient_channels_better_than_rtn(rng):
    w = rng.standard_normal((128, 48)).astype(np.float32)
    x = rng.standard_normal((512, 128)).astype(np.float32)
    x[:, rng.choice(128, 6, replace=False)] *= 25.0  # a few salient input channels, as in LLM activations
    s, _ = awq.search_linear_scale([jnp.asarray(w)], jnp.asarray(x), jnp.asarray(np.abs(x).mean(0)), 4, 32)
    s = np.asarray(s, np.float64)
    ref = x.astype(np.float64) @ w
    rtn = x @ numpy_dequantize(quantized.quantize(w, 4, 32))
    scaled = (x / s) @ numpy_dequantize(quantized.quantize((w * s[:, None]).astype(np.float32), 4, 32))
    rtn_err, awq_err = np.mean((rtn - ref) ** 2), np.mean((scaled - ref) ** 2)
    assert awq_err < 0.9 * rtn_err, (awq_err, rtn_err)


def test_awq_folding_keeps_the_float_model_and_quantizes_it(seed, float32_parity):
    cfg = tiny_config(num_layers=1)
    params = random_params(cfg, seed % 1000)
    batches = [np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, 16))]
    acts = awq.collect_activations(params, cfg, batches, keep_rows=32)
    assert acts[0]["attn"][1].shape == (32, cfg.hidden_size) and acts[0]["mlp_act"][0].shape == (cfg.intermediate_size,)
    folded, _ = awq.awq_params(params, cfg, acts, 4, 32, scale_wo=True)
    tokens = {"tokens": jnp.asarray(batches[0])}
    float32_parity(internlm2.forward(folded, tokens, cfg)[0], internlm2.forward(params, tokens, cfg)[0],
                   what="AWQ scales folded into norms and w3")
    # scales were folded (a search may keep alpha = 0, i.e. RTN, for some input, so not every leaf moves)
    changed = [k for k in params["layers"] if not np.allclose(np.asarray(folded["layers"][k]),
                                                              np.asarray(params["layers"][k]))]
    assert {"attention_norm", "ffn_norm", "w3", "wqkv", "wo"} & set(changed), changed


def test_bad_quantization_requests_fail_with_one_clear_error():
    cfg = tiny_config()  # hidden 64, intermediate 96
    params = random_params(cfg, 0)
    with pytest.raises(ValueError, match="bits must be 4 or 8, got 3"):
        quantized.quantize_params(params, cfg, 3, 32)
    with pytest.raises(ValueError, match=r"group_size 128 does not divide .*layers/wqkv \(64\).*\(e\.g\. 32\)"):
        quantized.quantize_params(params, cfg, 4, 128)
    packed, qcfg = quantized.quantize_params(params, cfg, 8, 32)
    with pytest.raises(ValueError, match="already quantized"):
        quantized.quantize_params(packed, qcfg, 4, 32)
    with pytest.raises(ValueError, match="already quantized"):
        awq.quantize_awq(packed, qcfg, [], 4, 32)


def test_gguf_kept_quantized_uses_the_files_values_and_gives_the_float_load_logits(smollm2, float32_parity):
    from intern_jax.checkpoint import embedded_model_path, load_model

    kept = load_model(embedded_model_path(), keep_quantized=True)
    w = kept.params["layers"]["w1"]
    assert quantized.is_packed(w) and w.bits == 4 and w.group_size == 32 and kept.params["output"].bits == 8
    # the file's values exactly (Q4_1 codes, scales and offsets; the tied Q8_0 embedding as the head)
    np.testing.assert_array_equal(np.asarray(w.dequantize()), np.asarray(smollm2.params["layers"]["w1"]))
    np.testing.assert_array_equal(np.asarray(kept.params["output"].dequantize()),
                                  np.asarray(smollm2.params["tok_embeddings"]).T)
    assert quantized.param_bytes(kept.params) < 0.45 * quantized.param_bytes(smollm2.params)
    tokens = {"tokens": jnp.asarray([smollm2.tokenizer.encode("The capital of France is Paris, and the capital")])}
    forward = jax.jit(internlm2.forward, static_argnums=2)
    got = forward(kept.params, tokens, kept.config)[0]
    want = forward(smollm2.params, tokens, smollm2.config)[0]
    float32_parity(got, want, rel=1e-4, what="GGUF packed vs expanded")
