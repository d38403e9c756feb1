"""PEFT export: the adapter directory loads with peft.PeftModel onto transformers' model of the base and
reproduces our LoRA logits (tiny random Llama with GQA; the real SmolLM2 GGUF base, slow)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.checkpoint import save_hf
from intern_jax.checkpoint.peft import base_layout, peft_tensors, save_peft
from intern_jax.model import internlm2
from intern_jax.model import lora as L

LORA = L.LoraConfig(rank=4, alpha=12.0)


def _adapters(params, lora, seed):
    rng = np.random.default_rng(seed)
    fresh = L.init_lora(params, lora, jax.random.key(seed))
    return jax.tree.map(lambda x: jnp.asarray(0.05 * rng.standard_normal(x.shape), jnp.float32), fresh)


def _peft_logits(model, adapter_dir, tokens):
    import torch
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    with torch.no_grad():
        return peft_model(torch.tensor(np.array(tokens), dtype=torch.long)).logits.float().numpy()


def _our_logits(params, adapters, lora, cfg, tokens):
    return np.asarray(internlm2.forward(L.apply_lora(params, adapters, lora), {"tokens": tokens}, cfg)[0])


def test_llama_adapter_loads_in_peft_and_matches_our_logits(tiny, make_params, tmp_path):
    import torch
    import transformers

    cfg = tiny(num_heads=4, num_kv_heads=2, attention_bias=True)
    params = make_params(cfg, seed=3)
    save_hf(tmp_path / "base", cfg, params, layout="llama")
    adapters = _adapters(params, LORA, 3)
    out = save_peft(tmp_path / "adapter", cfg, adapters, LORA, layout="llama", base_model_name="tiny")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 12.0 and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                "v_proj"]
    model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 11)), jnp.int32)
    ours = _our_logits(params, adapters, LORA, cfg, tokens)
    theirs = _peft_logits(model, out, tokens)
    base = np.asarray(internlm2.forward(params, {"tokens": tokens}, cfg)[0])
    assert np.abs(ours - base).max() > 1e-2  # the adapters change the logits ...
    np.testing.assert_allclose(theirs, ours, atol=2e-4 * max(1, np.abs(ours).max()))  # ... identically in peft


def test_packed_qkv_adapter_shares_a_and_splits_b_per_projection(tiny, make_params):
    cfg = tiny(num_heads=4, num_kv_heads=2)
    lora = L.LoraConfig(rank=3, targets=r"layers/wqkv")
    adapters = _adapters(make_params(cfg), lora, 4)
    tensors, targets = peft_tensors(cfg, adapters, "llama")
    assert targets == ["k_proj", "q_proj", "v_proj"]
    p = "base_model.model.model.layers.1.self_attn."
    a = np.asarray(adapters["layers"]["wqkv"]["a"][1])
    b = np.asarray(adapters["layers"]["wqkv"]["b"][1])  # [r, K, G+2, D]
    for proj in "qkv":
        np.testing.assert_array_equal(tensors[p + f"{proj}_proj.lora_A.weight"], a.T)
    # key head k of B is column block k of k_proj's lora_B (out = k * D + d)
    D = cfg.head_dim
    np.testing.assert_array_equal(tensors[p + "k_proj.lora_B.weight"][D : 2 * D], b[:, 1, cfg.q_per_kv, :].T)
    # query head h = k * G + g
    G = cfg.q_per_kv
    np.testing.assert_array_equal(tensors[p + "q_proj.lora_B.weight"][(1 * G + 1) * D : (1 * G + 2) * D],
                                  b[:, 1, 1, :].T)


def test_save_peft_refuses_a_non_empty_directory(tiny, make_params, tmp_path):
    cfg = tiny()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        save_peft(tmp_path / "x", cfg, _adapters(make_params(cfg), LORA, 0), LORA, layout="llama")


@pytest.mark.slow
def test_smollm2_gguf_adapter_changes_logits_as_in_peft_on_transformers_gguf_model(smollm2, tmp_path, float32_parity,
                                                                                    rng):
    """Rank-8 adapters on every projection of the real SmolLM2 move the logits (by 10-20 here), and peft on
    transformers' GGUF model of the same file moves them identically: the largest gap, measured 2-3e-6 of the
    largest logit (~1e-4 of ~32), is float32 summation order over 30 layers; bound rel=1e-5."""
    from intern_jax.checkpoint import embedded_model_path
    from intern_jax.testing import load_transformers_gguf

    path = embedded_model_path()
    assert base_layout(path) == "llama"
    lora = L.LoraConfig(rank=8, alpha=16.0)
    adapters = _adapters(smollm2.params, lora, int(rng.integers(1 << 30)))
    out = save_peft(tmp_path / "adapter", smollm2.config, adapters, lora, layout="llama", base_model_name=str(path))
    tokens = jnp.asarray(rng.integers(0, 1000, (1, 16)), jnp.int32)
    ours = _our_logits(smollm2.params, adapters, lora, smollm2.config, tokens)
    base = np.asarray(internlm2.forward(smollm2.params, {"tokens": tokens}, smollm2.config)[0])
    moved = float(np.abs(ours - base).max())
    theirs = _peft_logits(load_transformers_gguf(path), out, tokens)
    assert moved > 1.0, f"the adapters moved the logits by only {moved:.3g}"
    float32_parity(ours, theirs, rel=1e-5, what="ours vs peft on the transformers GGUF model")
