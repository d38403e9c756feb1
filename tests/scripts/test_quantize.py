"""scripts/quantize.py end to end on a tiny checkpoint: write, load packed, generate; and its bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.checkpoint import load_model, save_native
from intern_jax.inference import Decoder, generate_text
from intern_jax.inference.sampling import SamplingParams
from intern_jax.model import internlm2, quantized
from intern_jax.testing import random_params, tiny_config

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("INTERN_JAX_DEBUG", "XLA_FLAGS")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_backend_optimization_level=0")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/quantize.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def quantized_checkpoint(tmp_path_factory, smollm2, seed):
    """A one-layer model with SmolLM2's tokenizer, saved natively, then AWQ-quantized to 4 bits by the script."""
    d = tmp_path_factory.mktemp("quantize")
    cfg = tiny_config(num_layers=1, vocab_size=smollm2.tokenizer.vocab_size, max_position_embeddings=128)
    params = random_params(cfg, seed % 1000, scale=0.1)
    save_native(d / "float", cfg, params, smollm2.tokenizer)
    code, out, err = _run("--model", d / "float", "--method", "awq", "--bits", 4, "--group-size", 32,
                          "--calib-samples", 2, "--calib-seq-len", 32, "--output", d / "q4")
    assert code == 0, err
    return d, cfg, params, json.loads(out.strip().splitlines()[-1])


def test_quantize_script_writes_a_checkpoint_that_loads_packed_and_generates(quantized_checkpoint, float32_parity):
    d, cfg, params, report = quantized_checkpoint
    assert report["method"] == "awq" and report["param_bytes_after"] < report["param_bytes_before"]
    model = load_model(d / "q4")
    w = model.params["layers"]["w1"]
    assert quantized.is_packed(w) and w.bits == 4 and w.group_size == 32 and w.q.dtype == jnp.uint8
    assert quantized.param_bytes(model.params) == report["param_bytes_after"]
    # the packed model computes the float model of its dequantized weights, and stays near the original
    tokens = {"tokens": jnp.asarray([model.tokenizer.encode("def quantize(weights): return packed codes")])}
    got = np.asarray(jax.jit(internlm2.forward, static_argnums=2)(model.params, tokens, model.config)[0])
    expanded = jax.tree.map(lambda w: w.dequantize() if quantized.is_packed(w) else w, model.params,
                            is_leaf=quantized.is_packed)
    float32_parity(got, internlm2.forward(expanded, tokens, model.config)[0], rel=1e-4, what="packed vs expanded")
    want = np.asarray(internlm2.forward(params, tokens, cfg)[0])
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95
    text, result = generate_text(Decoder.from_model(model), "Hello", SamplingParams(max_new_tokens=4, min_new_tokens=4))
    assert result.stats()["generated_tokens"] == 4 and isinstance(text, str)


def test_quantize_script_bad_input_is_one_clear_line(quantized_checkpoint):
    d = quantized_checkpoint[0]
    code, _, err = _run("--model", d / "float", "--method", "rtn", "--bits", 3, "--output", d / "bad")
    assert code == 2 and err.strip() == "quantize.py: error: --bits must be 4 or 8, got 3"
    code, _, err = _run("--model", d / "q4", "--method", "rtn", "--bits", 8, "--group-size", 32, "--output", d / "bad")
    assert code == 2 and "already quantized" in err and len(err.strip().splitlines()) == 1, err
