"""Hugging Face safetensors import/export: lossless round trips, both layouts, sharding, and clear errors."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from intern_jax.checkpoint import detect_format, load_model, save_hf
from intern_jax.checkpoint.hf import INDEX_FILE, SINGLE_FILE, config_from_hf
from intern_jax.config import ConfigError, RopeScaling, load_config
from intern_jax.model import internlm2
from intern_jax.sharding import make_mesh


@pytest.mark.parametrize("layout", ["internlm2", "llama"])
@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(attention_bias=True, tie_word_embeddings=True, rope_scaling=RopeScaling("dynamic", 2.0)),
        dict(num_kv_heads=4, rope_scaling=RopeScaling("linear", 4.0)),
    ],
    ids=["gqa", "bias_tied_dynamic", "mha_linear"],
)
def test_hf_export_then_import_is_lossless(layout, overrides, tiny, make_params, trees_equal, tmp_path):
    cfg = tiny(**overrides)
    params = make_params(cfg)
    save_hf(tmp_path, cfg, params, layout=layout)
    assert detect_format(tmp_path) == "hf"
    loaded = load_model(tmp_path)
    assert loaded.config == cfg
    assert loaded.tokenizer is None
    trees_equal(loaded.params, params)


def test_llama_mlp_bias_and_explicit_head_dim_round_trip(tiny, make_params, trees_equal, tmp_path):
    cfg = tiny(mlp_bias=True, attention_bias=True, head_dim=8)
    params = make_params(cfg)
    save_hf(tmp_path, cfg, params, layout="llama")
    loaded = load_model(tmp_path)
    assert loaded.config == cfg
    trees_equal(loaded.params, params)


def test_internlm2_wqkv_rows_are_llama_qkv_grouped_per_kv_head(tiny, make_params, tmp_path):
    """InternLM2 packs, per kv head, its G query heads then key then value ("(h gs d)" in its
    modeling code); the Llama export (checked against transformers elsewhere) is the reference."""
    cfg = tiny(hidden_size=96, num_heads=6, num_kv_heads=2, attention_bias=True)
    params = make_params(cfg)
    save_hf(tmp_path / "i", cfg, params, layout="internlm2")
    save_hf(tmp_path / "l", cfg, params, layout="llama")
    packed = load_file(tmp_path / "i" / SINGLE_FILE)
    split = load_file(tmp_path / "l" / SINGLE_FILE)
    K, G, D, E = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim, cfg.hidden_size
    for kind, tail in (("weight", (E,)), ("bias", ())):
        w = packed[f"model.layers.1.attention.wqkv.{kind}"].reshape(K, G + 2, D, *tail)
        q = split[f"model.layers.1.self_attn.q_proj.{kind}"].reshape(K, G, D, *tail)
        np.testing.assert_array_equal(w[:, :G], q)
        np.testing.assert_array_equal(w[:, G], split[f"model.layers.1.self_attn.k_proj.{kind}"].reshape(K, D, *tail))
        np.testing.assert_array_equal(
            w[:, G + 1], split[f"model.layers.1.self_attn.v_proj.{kind}"].reshape(K, D, *tail)
        )
    np.testing.assert_array_equal(
        packed["model.layers.0.attention.wo.weight"], split["model.layers.0.self_attn.o_proj.weight"]
    )
    np.testing.assert_array_equal(packed["output.weight"], split["lm_head.weight"])


def internlm2_to_llama_state(states: dict, num_heads: int, num_kv_heads: int, head_dim: int) -> dict:
    """InternLM's own InternLM2 -> Llama conversion (``tools/convert2llama.py`` in the InternLM repository),
    restated in torch: wqkv rows are ``(h gs d)`` with h the kv heads and gs = G + 2 (G query heads, then
    one key head, then one value head); w1/w3/w2 are gate/up/down; attention_norm/ffn_norm the input and
    post-attention norms; tok_embeddings the embedding and output the head."""
    import torch

    groups = num_heads // num_kv_heads
    names = {"attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
             "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
    out = {}
    for key, value in states.items():
        value = torch.as_tensor(value)
        if "wqkv" in key:
            grouped = value.reshape(num_kv_heads, groups + 2, head_dim, value.shape[-1])
            wq, wk, wv = torch.split(grouped, [groups, 1, 1], dim=1)
            prefix = key.split("attention")[0]
            for name, w in (("q_proj", wq), ("k_proj", wk), ("v_proj", wv)):
                out[f"{prefix}self_attn.{name}.weight"] = w.reshape(-1, value.shape[-1])
        elif key == "model.tok_embeddings.weight":
            out["model.embed_tokens.weight"] = value
        elif key == "output.weight":
            out["lm_head.weight"] = value
        else:
            old = next((n for n in names if n in key), None)
            out[key.replace(old, names[old]) if old else key] = value
    return out


@pytest.mark.parametrize("kv_heads", [2, 6], ids=["gqa", "mha"])
def test_internlm2_export_logits_match_transformers_llama_after_internlm_conversion(kv_heads, tiny, make_params,
                                                                                   tmp_path, float32_parity, rng):
    """An InternLM2-layout export, converted by InternLM's documented wqkv split and name map (above, not our
    reader), runs in transformers' LlamaForCausalLM with the logits of our forward."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = tiny(hidden_size=96, num_heads=6, num_kv_heads=kv_heads, num_layers=2)
    params = make_params(cfg, seed=int(rng.integers(1 << 30)))
    save_hf(tmp_path, cfg, params, layout="internlm2")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["InternLM2ForCausalLM"] and config["bias"] is False
    state = internlm2_to_llama_state(load_file(tmp_path / SINGLE_FILE), config["num_attention_heads"],
                                     config["num_key_value_heads"],
                                     config["hidden_size"] // config["num_attention_heads"])
    # as convert2llama does with the config: drop the InternLM2-only keys, bias -> attention_bias
    for key in ("_name_or_path", "auto_map", "transformers_version", "model_type", "architectures",
                "tokenizer_class", "attn_implementation"):
        config.pop(key, None)
    config["attention_bias"] = config.pop("bias")
    model = transformers.LlamaForCausalLM._from_config(transformers.LlamaConfig(**config),
                                                       attn_implementation="eager", dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    tokens = rng.integers(0, cfg.vocab_size, (2, 17))
    with torch.no_grad():
        theirs = model.eval()(torch.from_numpy(tokens)).logits.numpy()
    ours, _ = internlm2.forward(load_model(tmp_path).params, {"tokens": tokens.astype(np.int32)}, cfg)
    float32_parity(ours, theirs, what="InternLM2 export via InternLM's conversion vs transformers Llama")


def test_export_writes_configs_transformers_reads(tiny, make_params, tmp_path):
    cfg = tiny(rope_scaling=RopeScaling("linear", 2.0), attention_bias=True)
    save_hf(tmp_path / "i", cfg, make_params(cfg), layout="internlm2")
    d = json.loads((tmp_path / "i" / "config.json").read_text())
    assert d["model_type"] == "internlm2" and d["architectures"] == ["InternLM2ForCausalLM"]
    assert d["bias"] is True and d["rope_scaling"] == {"type": "linear", "factor": 2.0}
    transformers = pytest.importorskip("transformers")
    save_hf(tmp_path / "l", cfg, make_params(cfg), layout="llama")
    hf = transformers.AutoConfig.from_pretrained(tmp_path / "l")
    assert hf.rope_parameters["rope_type"] == "linear" and hf.rope_parameters["factor"] == 2.0
    assert hf.rope_parameters["rope_theta"] == cfg.rope_theta
    assert (hf.head_dim, hf.num_key_value_heads, hf.attention_bias) == (cfg.head_dim, 2, True)


def test_sharded_export_writes_index_and_reloads(tiny, make_params, trees_equal, tmp_path):
    cfg = tiny()
    params = make_params(cfg)
    save_hf(tmp_path, cfg, params, layout="llama", max_shard_size="40KB")
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / SINGLE_FILE).exists()
    assert index["metadata"]["total_size"] == sum(x.nbytes for x in jax.tree.leaves(params))
    trees_equal(load_model(tmp_path).params, params)


def test_hf_load_onto_mesh_uses_model_shardings(tiny, make_params, trees_equal, tmp_path):
    cfg = tiny(attention_bias=True)
    params = make_params(cfg)
    save_hf(tmp_path, cfg, params, layout="internlm2")
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    loaded = load_model(tmp_path, mesh=mesh)
    trees_equal(loaded.params, params)
    want = internlm2.param_shardings(cfg, mesh)
    for x, s in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(want), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)


def test_load_casts_to_requested_dtype(tiny, make_params, tmp_path):
    cfg = tiny()
    params = make_params(cfg)
    save_hf(tmp_path, cfg, params, layout="internlm2")
    loaded = load_model(tmp_path, dtype="bfloat16")
    assert loaded.config.param_dtype == "bfloat16"
    assert {x.dtype.name for x in jax.tree.leaves(loaded.params)} == {"bfloat16"}
    np.testing.assert_array_equal(np.asarray(loaded.params["norm"]), np.asarray(params["norm"].astype("bfloat16")))


def test_bf16_export_reloads_bitwise(tiny, make_params, trees_equal, tmp_path):
    cfg = tiny(param_dtype="bfloat16")
    params = make_params(cfg)
    save_hf(tmp_path, cfg, params, layout="llama")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    trees_equal(load_model(tmp_path, dtype="bfloat16").params, params)


# ---------------------------------------------------------------------------
# Bad input


@pytest.fixture
def llama_dir(tiny, make_params, tmp_path):
    cfg = tiny()
    save_hf(tmp_path / "ckpt", cfg, make_params(cfg), layout="llama")
    return tmp_path / "ckpt"


def test_nonexistent_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_directory_without_checkpoint_says_what_is_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no recognisable checkpoint"):
        load_model(tmp_path)


def test_config_without_safetensors_is_explained(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="only safetensors"):
        load_model(tmp_path)


def test_file_that_is_not_gguf_is_rejected(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not a GGUF"):
        load_model(tmp_path / "model.bin")


def test_missing_shard_listed_in_index_is_named(tiny, make_params, tmp_path):
    cfg = tiny()
    save_hf(tmp_path, cfg, make_params(cfg), layout="internlm2", max_shard_size="40KB")
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(ValueError, match=victim.name):
        load_model(tmp_path)


def test_truncated_safetensors_is_reported(llama_dir):
    f = llama_dir / SINGLE_FILE
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_model(llama_dir)


def test_missing_tensor_is_named(llama_dir):
    f = llama_dir / SINGLE_FILE
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, f)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(llama_dir)


def test_unused_tensor_is_an_error_not_skipped(llama_dir):
    f = llama_dir / SINGLE_FILE
    tensors = load_file(f)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.ones(64, np.float32)
    save_file(tensors, f)
    with pytest.raises(ValueError, match="attention_bias"):
        load_model(llama_dir)


def test_tensor_of_wrong_shape_is_named(llama_dir):
    f = llama_dir / SINGLE_FILE
    tensors = load_file(f)
    tensors["model.layers.0.mlp.gate_proj.weight"] = np.ones((95, 64), np.float32)
    save_file(tensors, f)
    with pytest.raises(ValueError, match=r"gate_proj\.weight \[95, 64\]"):
        load_model(llama_dir)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "model_type 'gpt2'.*not supported"),
        ({"attention_sink": True}, r"unknown field\(s\) \['attention_sink'\]"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "'llama3' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantized"),
    ],
    ids=["model_type", "unknown_field", "rope_type", "activation", "quantized"],
)
def test_unsupported_config_is_named(llama_dir, change, message):
    path = llama_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ConfigError, match=message):
        load_model(llama_dir)


def test_internlm2_export_refuses_mlp_bias(tiny, make_params, tmp_path):
    cfg = tiny(mlp_bias=True)
    with pytest.raises(ValueError, match="mlp_bias"):
        save_hf(tmp_path, cfg, make_params(cfg), layout="internlm2")


def test_released_internlm2_7b_config_json_maps_to_our_7b_config():
    """The fields of internlm/internlm2-7b's config.json, as released."""
    released = {
        "architectures": ["InternLM2ForCausalLM"],
        "attn_implementation": "eager",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config"},
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "internlm2",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "pad_token_id": 2,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "rope_theta": 1000000,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.33.2",
        "use_cache": True,
        "vocab_size": 92544,
    }
    cfg, layout = config_from_hf(released)
    ours = load_config("configs/model/internlm2_7b.py")
    assert layout == "internlm2"
    assert cfg == dataclasses.replace(ours, name="")
