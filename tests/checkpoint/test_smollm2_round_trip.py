"""The real embedded model (SmolLM2-135M, Q4_1 GGUF) through every format, checked by logits.

GGUF -> native -> HF InternLM2 -> native -> HF Llama must keep config, params and tokenizer
bit-identical (conversions are pure relayouts in float32). That check is against our own reader
and writer; the independent one is the final Llama export run by transformers' LlamaForCausalLM.
"""

import numpy as np
import pytest

from intern_jax.checkpoint import load_model, save_hf, save_native
from intern_jax.model import internlm2

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]

pytestmark = pytest.mark.slow


def logits_of(model, tokens, length=48):
    """Logits ``[1, len(tokens), V]``; right-padded to ``length`` so one compilation serves all calls."""
    import jax.numpy as jnp

    n = len(tokens)
    batch = {
        "tokens": jnp.asarray([list(tokens) + [0] * (length - n)], jnp.int32),
        "segment_ids": jnp.asarray([[1] * n + [0] * (length - n)], jnp.int32),
    }
    out, _ = internlm2.forward_jit(model.params, batch, model.config)
    return np.asarray(out[:, :n])


@pytest.fixture(scope="module")
def chain(smollm2, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    stages = {"gguf": smollm2}
    save_native(root / "native1", smollm2.config, smollm2.params, smollm2.tokenizer)
    stages["native1"] = load_model(root / "native1")
    save_hf(
        root / "internlm2",
        smollm2.config,
        stages["native1"].params,
        stages["native1"].tokenizer,
        layout="internlm2",
    )
    stages["internlm2"] = load_model(root / "internlm2")
    save_native(
        root / "native2",
        stages["internlm2"].config,
        stages["internlm2"].params,
        stages["internlm2"].tokenizer,
    )
    stages["native2"] = load_model(root / "native2")
    save_hf(
        root / "llama",
        stages["native2"].config,
        stages["native2"].params,
        stages["native2"].tokenizer,
        layout="llama",
    )
    stages["llama"] = load_model(root / "llama")
    return root, stages


def test_smollm2_config_matches_its_gguf_metadata(smollm2):
    cfg = smollm2.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.rope_theta) == (1536, 49152, 100000.0)
    assert cfg.tie_word_embeddings and cfg.head_dim == 64
    assert "<|im_start|>" in smollm2.tokenizer.chat_template


def test_smollm2_completes_capital_of_france_with_paris(smollm2):
    """Semantic check of dequantization and the Q/K un-permutation: a wrong rope order garbles this."""
    tok = smollm2.tokenizer
    ids = tok.encode("The capital of France is")
    assert tok.decode([int(logits_of(smollm2, ids)[0, -1].argmax())]).strip() == "Paris"


def test_every_format_in_the_chain_keeps_config_params_and_tokenizer_bit_identical(chain, smollm2, trees_equal):
    """Each stage reloads the same config, bitwise-equal params and a tokenizer that encodes, templates and
    marks bos/eos alike. Equal logits then follow from equal params and config; comparing them only shows
    that nothing else feeds the forward. Whether the exported layout is right is the next test's question."""
    _, stages = chain
    tok = smollm2.tokenizer
    text = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    ids = tok.encode(text)
    reference = logits_of(smollm2, ids)
    for name, model in stages.items():
        assert model.config == smollm2.config, name
        trees_equal(model.params, smollm2.params)
        assert model.tokenizer.encode(text) == ids, name
        assert (model.tokenizer.bos_id, model.tokenizer.eos_id) == (tok.bos_id, tok.eos_id), name
        assert model.tokenizer.chat_template == tok.chat_template, name
        np.testing.assert_array_equal(logits_of(model, ids), reference, err_msg=name)


def test_llama_export_runs_in_transformers_with_matching_logits(chain, smollm2, float32_parity):
    """Bound: our float32 forward is within 1e-5 x max|logit| of a float64 run of the same weights
    (measured ~4e-6 relative at logits up to ~28: a few ulps per layer over 30 layers), and
    within 2e-5 x max|logit| of transformers' own float32 run, which has an error of the same size."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root, _ = chain
    tok = smollm2.tokenizer
    text = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    ids = tok.encode(text)
    ours = logits_of(smollm2, ids)
    model = transformers.LlamaForCausalLM.from_pretrained(
        root / "llama", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        theirs32 = model(torch.tensor([ids])).logits.numpy()
        theirs64 = model.double()(torch.tensor([ids])).logits.numpy()
    float32_parity(ours, theirs64, what="ours vs transformers float64")
    float32_parity(ours, theirs32, rel=2e-5, what="ours vs transformers float32")
    hf_tok = transformers.AutoTokenizer.from_pretrained(root / "llama")
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
