"""The native group-quantized GEMV (kernels/cpu) against a float64 dequantize-then-dot reference in numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.inference import Decoder, SamplingParams, generate
from intern_jax.model import quantized
from intern_jax.testing import random_params, tiny_config
from kernels import cpu as native

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the native kernel is the CPU path")


def reference(x, q, scales, mins, bits, group_size):
    """``x @ w`` in float64, with ``w`` rebuilt from the codes here (nibbles unpacked by hand)."""
    q = np.asarray(q)
    if bits == 4:
        codes = np.empty((2 * q.shape[0], q.shape[1]), np.float64)
        codes[0::2], codes[1::2] = q & 0xF, q >> 4
    else:
        codes = q.astype(np.float64)
    s = np.repeat(np.asarray(scales, np.float64), group_size, axis=0)
    w = codes * s + (0.0 if mins is None else np.repeat(np.asarray(mins, np.float64), group_size, axis=0))
    x = np.asarray(x, np.float64).reshape(-1, w.shape[0])
    return x @ w, np.abs(x) @ np.abs(w)


def random_case(rng, bits):
    """Activations and a ``PackedWeight`` of random codes, scales and (4-bit) offsets, drawn in numpy."""
    group = int(rng.choice([2, 8, 32, 64]))
    d_in = group * int(rng.integers(1, 12))
    d_out = int(rng.integers(1, 300))  # odd widths: the 16-lane tails
    rows = int(rng.integers(1, native.MAX_ROWS + 1))
    groups = d_in // group
    scales = rng.uniform(0.001, 0.1, (groups, d_out)).astype(np.float32)
    if bits == 8:
        q, mins = rng.integers(-127, 128, (d_in, d_out)).astype(np.int8), None
    else:
        q = rng.integers(0, 256, (d_in // 2, d_out)).astype(np.uint8)
        mins = rng.uniform(-1, 0, (groups, d_out)).astype(np.float32)
    x = rng.standard_normal((rows, d_in)).astype(np.float32)
    pw = quantized.PackedWeight(jnp.asarray(q), jnp.asarray(scales), None if mins is None else jnp.asarray(mins),
                                bits, group, (d_in,), (d_out,))
    return x, pw


@pytest.fixture(scope="module")
def built():
    if not native.available():
        pytest.fail(f"the native kernel did not build here: {native._state.get('error', native.ENV + '=0')}")


@pytest.mark.parametrize("bits", [8, 4])
def test_native_gemv_matches_float64_dequantized_reference(built, bits, rng):
    run = jax.jit(native.group_gemv, static_argnames=("bits", "group_size", "out_dtype"))
    for _ in range(3):
        x, pw = random_case(rng, bits)
        for scale_dtype in (jnp.float32, jnp.float16):  # float16: GGUF's block scales, read as they are
            s = pw.scales.astype(scale_dtype)
            m = None if pw.mins is None else pw.mins.astype(scale_dtype)
            want, bound = reference(x, pw.q, s, m, bits, pw.group_size)
            got = np.asarray(run(x, pw.q, s, m, bits=bits, group_size=pw.group_size))
            assert got.shape == want.shape and got.dtype == np.float32
            err = np.abs(got - want)
            assert (err <= 1e-5 * bound + 1e-30).all(), (x.shape, pw.q.shape, pw.group_size, float(err.max()))


def test_native_gemv_keeps_leading_axes_and_output_dtype(built, rng):
    x, pw = random_case(rng, 8)
    x3 = x.reshape(x.shape[0], 1, -1)
    got = jax.jit(lambda x: native.group_gemv(x, pw.q, pw.scales, bits=8, group_size=pw.group_size,
                                              out_dtype=jnp.bfloat16))(x3)
    assert got.shape == (x.shape[0], 1, pw.q.shape[1]) and got.dtype == jnp.bfloat16
    want, bound = reference(x, pw.q, pw.scales, None, 8, pw.group_size)
    assert (np.abs(np.asarray(got, np.float64).reshape(want.shape) - want) <= 1e-2 * bound + 1e-30).all()


def test_native_gemv_rejects_mismatched_layouts_with_clear_errors(built):
    x = jnp.ones((1, 64))
    q8, s = jnp.zeros((64, 8), jnp.int8), jnp.ones((2, 8))
    with pytest.raises(ValueError, match="codes"):
        native.group_gemv(x, q8[:32], s, bits=8, group_size=32)
    with pytest.raises(ValueError, match="uint8"):
        native.group_gemv(x, q8[:32], s, bits=4, group_size=32)
    with pytest.raises(ValueError, match="scales"):
        native.group_gemv(x, q8, s[:1], bits=8, group_size=32)
    with pytest.raises(ValueError, match="group_size"):
        native.group_gemv(x, q8, s, bits=8, group_size=30)


def test_packed_matmul_dispatches_decode_rows_to_native_and_prefill_to_xla(built, rng, monkeypatch):
    x, pw = random_case(rng, 4)
    hlo = lambda x: jax.jit(pw.matmul).lower(x).as_text()  # noqa: E731
    assert native.TARGET in hlo(x[:1])
    assert native.TARGET not in hlo(np.ones((native.MAX_ROWS + 1, x.shape[1]), np.float32))
    monkeypatch.setenv(native.ENV, "0")  # forced off: the XLA path, same product
    assert not native.available()
    assert native.TARGET not in hlo(x)
    want, bound = reference(x, pw.q, pw.scales, pw.mins, 4, pw.group_size)
    assert (np.abs(np.asarray(jax.jit(pw.matmul)(x)) - want) <= 1e-5 * bound + 1e-30).all()


def test_missing_compiler_warns_once_and_packed_weights_use_xla(rng, monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_state", {})  # as in a fresh process
    monkeypatch.setattr(native, "BUILD_DIR", tmp_path)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="XLA path"):
        assert not native.available()
    assert not native.available()  # decided once
    x, pw = random_case(rng, 8)
    assert native.TARGET not in jax.jit(pw.matmul).lower(x).as_text()
    want, bound = reference(x, pw.q, pw.scales, None, 8, pw.group_size)
    assert (np.abs(np.asarray(pw.matmul(x)) - want) <= 1e-5 * bound + 1e-30).all()


def test_decoder_greedy_tokens_equal_on_native_and_xla_paths(built, seed, monkeypatch):
    bits = (8, 4)[seed % 2]  # one width per run (each run draws a seed): two decoders compile per width
    cfg = tiny_config(num_layers=1)
    params = random_params(cfg, seed % 1000, scale=0.1)
    packed, qcfg = quantized.quantize_params(params, cfg, bits, 32, head=True)
    prompts = [[int(t) for t in np.random.default_rng(seed + i).integers(0, cfg.vocab_size, 5 + i)] for i in range(2)]
    greedy = SamplingParams(max_new_tokens=8)
    ours = generate(Decoder(packed, qcfg), prompts, greedy).tokens  # decode: two rows, native
    monkeypatch.setenv(native.ENV, "0")
    xla = generate(Decoder(packed, qcfg), prompts, greedy).tokens
    assert ours == xla


@pytest.mark.slow
def test_gguf_kept_packed_greedy_chat_equals_the_float32_load(built, smollm2_decoder):
    """The demo's default: the file's Q4_1 / Q8_0 blocks on the native kernel decode as the float32 load
    does (whose greedy tokens tests/inference/test_real_model.py ties to transformers)."""
    from intern_jax.checkpoint import embedded_model_path, load_model
    from intern_jax.inference import encode_prompt

    model = load_model(embedded_model_path(), keep_quantized=True)
    assert quantized.is_packed(model.params["layers"]["w1"]) and model.params["output"].bits == 8
    kept = Decoder.from_model(model)
    tok = smollm2_decoder.tokenizer
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}])
               for q in ("Name three prime numbers.", "Write a haiku about the sea.")]
    greedy = SamplingParams(max_new_tokens=16)  # decode rows: the native path
    assert generate(kept, prompts, greedy).tokens == generate(smollm2_decoder, prompts, greedy).tokens
