"""GGUF import: dequantization per type, llama.cpp's Q/K permutation, metadata, clear errors.

References nobody here wrote: the gguf package's own quantize/dequantize, and transformers'
GGUF loader (``load_gguf_checkpoint``) run through ``LlamaForCausalLM``.
"""

import itertools

import numpy as np
import pytest

from intern_jax.checkpoint import detect_format, load_model
from intern_jax.checkpoint import gguf as gguf_ckpt

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType


def write_gguf(path, tensors: dict, metadata=None, arch="llama"):
    """tensors: name -> (float array, type) or (raw block bytes, type)."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in (metadata or {}).items():
        getattr(writer, f"add_{key}")(value)
    for name, (array, kind) in tensors.items():
        if kind == Q.F32:
            writer.add_tensor(name, array.astype(np.float32))
        elif array.dtype == np.uint8:
            writer.add_tensor(name, array, raw_dtype=kind)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array.astype(np.float32), kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_back(path, name):
    reader = gguf_ckpt.open_reader(path)
    return gguf_ckpt.dequantize_tensor(next(t for t in reader.tensors if t.name == name))


@pytest.mark.parametrize("kind", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_dequantized_tensor_equals_gguf_reference_in_numpy_orientation(kind, tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 96)).astype(np.float32)  # [out, in], non-square: orientation shows
    path = write_gguf(tmp_path / "t.gguf", {"w": (a, Q[kind])})
    got = read_back(path, "w")
    reference = gguf.quants.dequantize(gguf.quants.quantize(a, Q[kind]), Q[kind])
    assert got.shape == a.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, reference)
    tolerance = {"F32": 0, "F16": 2e-3, "BF16": 2e-2, "Q8_0": 3e-2, "Q4_0": 0.5, "Q4_1": 0.5}[kind]
    assert np.abs(got - a).max() <= tolerance


def synthetic_k_blocks(kind, rows, blocks, rng):
    """Random K-quant super-blocks with finite f16 scales (gguf cannot quantize K types)."""
    size = gguf.GGML_QUANT_SIZES[kind][1]
    raw = rng.integers(0, 256, (rows, blocks, size), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.01, (rows, blocks, 2)).astype(np.float16).view(np.uint8).reshape(rows, blocks, 4)
    if kind == Q.Q4_K:
        raw[..., :4] = scales  # d, dmin lead the block
    else:  # Q6_K: d closes the block
        raw[..., -2:] = scales[..., :2]
    return raw.reshape(rows, blocks * size)


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K"])
def test_k_quant_tensor_equals_gguf_reference(kind, tmp_path):
    rng = np.random.default_rng(2)
    raw = synthetic_k_blocks(Q[kind], rows=3, blocks=2, rng=rng)
    path = write_gguf(tmp_path / "t.gguf", {"w": (raw, Q[kind])})
    got = read_back(path, "w")
    assert got.shape == (3, 512)
    np.testing.assert_array_equal(got, gguf.quants.dequantize(raw, Q[kind]))
    assert np.isfinite(got).all() and np.abs(got).max() > 0


def test_unpermute_matches_transformers_gguf_loader():
    processor = pytest.importorskip("transformers.modeling_gguf_pytorch_utils").LlamaTensorProcessor(
        config={"num_attention_heads": 6, "num_key_value_heads": 2}
    )
    rng = np.random.default_rng(3)
    q = rng.standard_normal((6 * 8, 20)).astype(np.float32)
    k = rng.standard_normal((2 * 8, 20)).astype(np.float32)
    np.testing.assert_array_equal(gguf_ckpt.unpermute_rows(q, 6), processor.process(q, "blk.0.attn_q.weight").weights)
    np.testing.assert_array_equal(gguf_ckpt.unpermute_rows(k, 2), processor.process(k, "blk.0.attn_k.weight").weights)


# ---------------------------------------------------------------------------
# A tiny Llama model written as GGUF


E, H, K, D, M, V, L = 64, 4, 2, 16, 96, 300, 2
TINY_METADATA = dict(
    block_count=L,
    context_length=64,
    embedding_length=E,
    feed_forward_length=M,
    head_count=H,
    head_count_kv=K,
    rope_freq_base=10000.0,
    layer_norm_rms_eps=1e-5,
    rope_dimension_count=D,
    vocab_size=V,
)


def tiny_llama_tensors(rng, kinds=(Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16, Q.BF16), tied=False):
    out = {}
    cycle = itertools.cycle(kinds)

    def add(name, shape, base=0.0, kind=None):
        out[name] = ((base + 0.1 * rng.standard_normal(shape)).astype(np.float32), kind or next(cycle))

    add("token_embd.weight", (V, E))
    add("output_norm.weight", (E,), 1.0, Q.F32)
    if not tied:
        add("output.weight", (V, E))
    for i in range(L):
        add(f"blk.{i}.attn_norm.weight", (E,), 1.0, Q.F32)
        add(f"blk.{i}.ffn_norm.weight", (E,), 1.0, Q.F32)
        add(f"blk.{i}.attn_q.weight", (H * D, E))
        add(f"blk.{i}.attn_k.weight", (K * D, E))
        add(f"blk.{i}.attn_v.weight", (K * D, E))
        add(f"blk.{i}.attn_output.weight", (E, H * D))
        add(f"blk.{i}.ffn_gate.weight", (M, E))
        add(f"blk.{i}.ffn_up.weight", (M, E))
        add(f"blk.{i}.ffn_down.weight", (E, M))
    return out


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_tiny_gguf_logits_match_transformers_gguf_loader(tied, tmp_path, float32_parity):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import jax.numpy as jnp
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from intern_jax.model import internlm2

    path = write_gguf(tmp_path / "tiny.gguf", tiny_llama_tensors(np.random.default_rng(4), tied=tied), TINY_METADATA)
    assert detect_format(path) == "gguf"
    ours = load_model(path)
    assert ours.tokenizer is None
    cfg = ours.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (L, E, H, K, D)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.tie_word_embeddings) == (V, M, tied)
    assert cfg.max_position_embeddings == 64 and cfg.rope_theta == 10000.0

    hf_config = transformers.LlamaConfig(**load_gguf_checkpoint(str(path))["config"])
    model = transformers.LlamaForCausalLM._from_config(hf_config, attn_implementation="eager", dtype=torch.float32)
    state = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, strict=not tied)
    tokens = np.random.default_rng(5).integers(0, V, (2, 20))
    with torch.no_grad():
        theirs = model.eval()(torch.from_numpy(tokens)).logits.numpy()
    logits, _ = internlm2.forward(ours.params, {"tokens": jnp.asarray(tokens, jnp.int32)}, cfg)
    float32_parity(logits, theirs, what="logits vs transformers")


def test_unsupported_tensor_type_is_named_with_its_type(tmp_path):
    tensors = tiny_llama_tensors(np.random.default_rng(6), kinds=(Q.Q8_0,))
    raw = np.random.default_rng(7).integers(0, 256, (M, gguf.GGML_QUANT_SIZES[Q.Q5_K][1]), dtype=np.uint8)
    tensors["blk.1.ffn_up.weight"] = (raw, Q.Q5_K)  # a valid Q5_K tensor [M, 256]: shape is not the issue
    path = write_gguf(tmp_path / "q5k.gguf", tensors, TINY_METADATA)
    with pytest.raises(ValueError, match=r"'blk\.1\.ffn_up\.weight' has type Q5_K"):
        load_model(path)


def test_unknown_gguf_tensor_is_an_error_not_skipped(tmp_path):
    tensors = tiny_llama_tensors(np.random.default_rng(8), kinds=(Q.Q8_0,))
    tensors["blk.0.attn_q_norm.weight"] = (np.ones(E, np.float32), Q.F32)
    path = write_gguf(tmp_path / "extra.gguf", tensors, TINY_METADATA)
    with pytest.raises(ValueError, match="attn_q_norm"):
        load_model(path)


def test_missing_gguf_metadata_is_named(tmp_path):
    meta = {k: v for k, v in TINY_METADATA.items() if k != "feed_forward_length"}
    path = write_gguf(tmp_path / "nometa.gguf", tiny_llama_tensors(np.random.default_rng(9)), meta)
    with pytest.raises(ValueError, match="llama.feed_forward_length"):
        load_model(path)


def test_unsupported_gguf_architecture_is_named(tmp_path):
    path = write_gguf(tmp_path / "other.gguf", {"token_embd.weight": (np.ones((4, 32)), Q.F32)}, arch="gpt2")
    with pytest.raises(ValueError, match="architecture 'gpt2'"):
        load_model(path)


def test_truncated_gguf_is_reported(tmp_path):
    path = write_gguf(tmp_path / "t.gguf", tiny_llama_tensors(np.random.default_rng(10)), TINY_METADATA)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_model(path)
