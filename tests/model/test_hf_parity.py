"""Our forward equals transformers' LlamaForCausalLM on the same weights (exported by save_hf).

Fresh random weights, every leaf perturbed (norms and biases included); torch CPU, float32,
eager attention. Covers GQA and MHA, tied and untied heads, attention and MLP biases,
linear and dynamic RoPE scaling (dynamic with a sequence past max_position_embeddings).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from intern_jax.checkpoint import save_hf  # noqa: E402
from intern_jax.config import ModelConfig, RopeScaling  # noqa: E402
from intern_jax.model import internlm2  # noqa: E402
from intern_jax.testing import random_params, tiny_config  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SEQ = 24


def tiny(**kw) -> ModelConfig:
    return tiny_config(**{"rope_theta": 10000.0, **kw})


def transformers_logits(directory, tokens: np.ndarray) -> np.ndarray:
    model = transformers.LlamaForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.numpy()


CASES = {
    "gqa_untied": dict(),
    "mha_tied": dict(num_kv_heads=4, tie_word_embeddings=True),
    "attention_and_mlp_bias_mqa": dict(mlp_bias=True, attention_bias=True, num_kv_heads=1),
    "head_dim_not_hidden_over_heads": dict(head_dim=8),
    "linear_rope": dict(rope_scaling=RopeScaling("linear", 2.0)),
    "dynamic_rope_past_max_positions": dict(rope_scaling=RopeScaling("dynamic", 2.0), max_position_embeddings=16),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_transformers_llama(case, tmp_path, float32_parity):
    cfg = tiny(**CASES[case])
    params = random_params(cfg, seed=len(case))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, SEQ))
    save_hf(tmp_path, cfg, params, layout="llama")
    ours, _ = internlm2.forward(params, {"tokens": jnp.asarray(tokens, jnp.int32)}, cfg)
    theirs = transformers_logits(tmp_path, tokens)
    assert np.abs(np.asarray(ours)).max() > 0.1  # not a degenerate comparison
    float32_parity(ours, theirs, what=case)


def test_dynamic_rope_parity_case_really_exceeds_max_positions():
    cfg = tiny(**CASES["dynamic_rope_past_max_positions"])
    assert SEQ > cfg.max_position_embeddings
    plain = tiny(max_position_embeddings=16)
    positions = jnp.arange(SEQ)[None]
    cos_dyn, _ = internlm2.layers.rope_tables(positions, cfg, jnp.array([SEQ]))
    cos_plain, _ = internlm2.layers.rope_tables(positions, plain, jnp.array([SEQ]))
    assert np.abs(np.asarray(cos_dyn - cos_plain)).max() > 1e-3
