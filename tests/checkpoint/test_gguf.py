"""GGUF import: dequantization per type, llama.cpp's Q/K permutation, metadata, clear errors.

References: block decoders written here from ggml's documented block layouts (``block_q4_0`` ...
``block_q6_K`` in ggml-common.h, ``dequantize_row_*`` in ggml-quants.c), first checked on hand-built
blocks whose values are worked out by hand, since the loader itself calls ``gguf.quants.dequantize``;
and transformers' GGUF loader (``load_gguf_checkpoint``) run through ``LlamaForCausalLM``.
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


# ---------------------------------------------------------------------------
# Block decoders from ggml's block layouts (little-endian; f16 scales). One block -> its float values.


def _f16(raw, at):
    return float(np.frombuffer(bytes(raw[at : at + 2]), "<f2")[0])


def decode_q8_0(raw):
    """34 bytes: f16 d, 32 x int8 q; x = d * q."""
    return _f16(raw, 0) * np.frombuffer(bytes(raw[2:34]), np.int8).astype(np.float64)


def _nibbles(qs):
    """16 bytes -> 32 values: the low nibbles are elements 0-15, the high nibbles elements 16-31."""
    qs = np.asarray(qs, np.uint8)
    return np.concatenate([qs & 0xF, qs >> 4]).astype(np.float64)


def decode_q4_0(raw):
    """18 bytes: f16 d, 16 bytes of nibbles; x = d * (q - 8)."""
    return _f16(raw, 0) * (_nibbles(raw[2:18]) - 8)


def decode_q4_1(raw):
    """20 bytes: f16 d, f16 m, 16 bytes of nibbles; x = d * q + m."""
    return _f16(raw, 0) * _nibbles(raw[4:20]) + _f16(raw, 2)


def _q4_k_scale_min(scales, j):
    """Sub-block j's 6-bit scale and min from the 12 packed bytes: for j < 4 the low 6 bits of bytes j and
    j + 4; for j >= 4 the nibbles of byte j + 4, topped with the high 2 bits of bytes j - 4 and j."""
    if j < 4:
        return scales[j] & 63, scales[j + 4] & 63
    return (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)


def decode_q4_k(raw):
    """144 bytes: f16 d, f16 dmin, 12 bytes of scales/mins, 128 bytes of nibbles; 256 values in 8 sub-blocks
    of 32. Each 32 bytes of nibbles hold two sub-blocks: low nibbles the first, high nibbles the second.
    x = d * scale * q - dmin * min."""
    d, dmin, scales, qs = _f16(raw, 0), _f16(raw, 2), [int(b) for b in raw[4:16]], np.asarray(raw[16:144], np.uint8)
    out = np.empty(256)
    for j in range(8):
        scale, minimum = _q4_k_scale_min(scales, j)
        chunk = qs[32 * (j // 2) : 32 * (j // 2) + 32]
        q = (chunk & 0xF) if j % 2 == 0 else (chunk >> 4)
        out[32 * j : 32 * j + 32] = d * scale * q.astype(np.float64) - dmin * minimum
    return out


def decode_q6_k(raw):
    """210 bytes: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 x int8 scales, f16 d; 256 values,
    a scale per 16. In each half of 128 values, position l + 32k (l < 32, k < 4) takes its low bits from
    ql[l + 32 (k % 2)] (low nibble for k < 2, high for k >= 2) and its high bits from bits 2k of qh[l].
    x = d * scale * (q - 32)."""
    ql, qh = np.asarray(raw[:128], np.uint8), np.asarray(raw[128:192], np.uint8)
    scales, d = np.frombuffer(bytes(raw[192:208]), np.int8), _f16(raw, 208)
    out = np.empty(256)
    for half in range(2):
        low, high = ql[64 * half : 64 * half + 64], qh[32 * half : 32 * half + 32]
        for k in range(4):
            nibble = low[32 * (k % 2) : 32 * (k % 2) + 32]
            nibble = (nibble & 0xF) if k < 2 else (nibble >> 4)
            q = nibble.astype(np.int64) | (((high >> (2 * k)) & 3).astype(np.int64) << 4)
            at = 128 * half + 32 * k
            out[at : at + 32] = d * scales[np.arange(at, at + 32) // 16] * (q - 32)
    return out


DECODERS = {"Q8_0": decode_q8_0, "Q4_0": decode_q4_0, "Q4_1": decode_q4_1, "Q4_K": decode_q4_k,
            "Q6_K": decode_q6_k}


def decode_tensor(raw, kind: str, shape):
    """Raw bytes [rows, row bytes] -> float64 [rows, cols], block by block."""
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[Q[kind]]
    flat = np.asarray(raw, np.uint8).reshape(-1, block_bytes)
    return np.concatenate([DECODERS[kind](b) for b in flat]).reshape(shape)


def _half(x):
    return [int(b) for b in np.array([x], "<f2").view(np.uint8)]


def test_decoders_give_hand_worked_values_on_hand_built_blocks():
    # Q8_0: d = 0.5, q = -16..15
    assert decode_q8_0(_half(0.5) + list(np.arange(-16, 16).astype(np.int8).view(np.uint8))).tolist() == \
        [0.5 * q for q in range(-16, 16)]
    # Q4_0 / Q4_1: byte j holds nibbles (j, 15 - j): elements j and 16 + j
    qs = [j | (15 - j) << 4 for j in range(16)]
    assert decode_q4_0(_half(2.0) + qs).tolist() == [2.0 * (j - 8) for j in range(16)] + \
        [2.0 * (7 - j) for j in range(16)]
    assert decode_q4_1(_half(0.25) + _half(-1.0) + qs).tolist() == [0.25 * j - 1 for j in range(16)] + \
        [0.25 * (15 - j) - 1 for j in range(16)]
    # Q4_K: scales/mins bytes 1..8, then 0x21 0x43 0x65 0x87; byte 0 also carries 0b10 in its top bits,
    # byte 5 0b01: sub-block scales (1, 2, 3, 4, 1 + 32, 3, 5, 7), mins (5, 6, 7, 8, 2, 4 + 16, 6, 8)
    scales = [1 | 0x80, 2, 3, 4, 5, 6 | 0x40, 7, 8, 0x21, 0x43, 0x65, 0x87]
    sub_scale, sub_min = [1, 2, 3, 4, 33, 3, 5, 7], [5, 6, 7, 8, 2, 20, 6, 8]
    qs = [(i % 16) | ((i * 7) % 16) << 4 for i in range(128)]  # byte i of chunk c: sub-blocks 2c (low), 2c + 1
    want = []
    for j in range(8):
        q = [(b & 0xF) if j % 2 == 0 else (b >> 4) for b in qs[32 * (j // 2) : 32 * (j // 2) + 32]]
        want += [0.5 * sub_scale[j] * v - 0.25 * sub_min[j] for v in q]
    assert decode_q4_k(_half(0.5) + _half(0.25) + scales + qs).tolist() == want
    # Q6_K: 6-bit values q_i = (5 i) % 64, scale per 16 values (-8..7), d = 0.125; packed by hand
    q = [(5 * i) % 64 for i in range(256)]
    sc = list(range(-8, 8))
    ql, qh = [0] * 128, [0] * 64
    for i, v in enumerate(q):
        half, pos = divmod(i, 128)
        k, l = divmod(pos, 32)
        ql[64 * half + 32 * (k % 2) + l] |= (v & 0xF) << (4 * (k // 2))
        qh[32 * half + l] |= (v >> 4) << (2 * k)
    raw = ql + qh + list(np.array(sc, np.int8).view(np.uint8)) + _half(0.125)
    assert decode_q6_k(raw).tolist() == [0.125 * sc[i // 16] * (q[i] - 32) for i in range(256)]


def read_back(path, name):
    reader = gguf_ckpt.open_reader(path)
    return gguf_ckpt.dequantize_tensor(next(t for t in reader.tensors if t.name == name))


@pytest.mark.parametrize("kind", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_dequantized_tensor_equals_layout_decoder_and_gguf_in_numpy_orientation(kind, tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 96)).astype(np.float32)  # [out, in], non-square: orientation shows
    path = write_gguf(tmp_path / "t.gguf", {"w": (a, Q[kind])})
    got = read_back(path, "w")
    reference = gguf.quants.dequantize(gguf.quants.quantize(a, Q[kind]), Q[kind])
    assert got.shape == a.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, reference)
    if kind in DECODERS:  # and against the decoder written here from ggml's layout
        raw = gguf.quants.quantize(a, Q[kind])
        np.testing.assert_array_equal(got, decode_tensor(raw, kind, a.shape).astype(np.float32))
    tolerance = {"F32": 0, "F16": 2e-3, "BF16": 2e-2, "Q8_0": 3e-2, "Q4_0": 0.5, "Q4_1": 0.5}[kind]
    assert np.abs(got - a).max() <= tolerance


def synthetic_k_blocks(kind, rows, blocks, rng, scale=(0.001, 0.01)):
    """Random K-quant super-blocks with finite f16 scales (gguf cannot quantize K types)."""
    size = gguf.GGML_QUANT_SIZES[kind][1]
    raw = rng.integers(0, 256, (rows, blocks, size), dtype=np.uint8)
    scales = rng.uniform(*scale, (rows, blocks, 2)).astype(np.float16).view(np.uint8).reshape(rows, blocks, 4)
    if kind == Q.Q4_K:
        raw[..., :4] = scales  # d, dmin lead the block
    else:  # Q6_K: d closes the block
        raw[..., -2:] = scales[..., :2]
    return raw.reshape(rows, blocks * size)


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K"])
def test_k_quant_tensor_equals_the_layout_decoder(kind, tmp_path, rng, seed):
    raw = synthetic_k_blocks(Q[kind], rows=3, blocks=2, rng=rng)
    path = write_gguf(tmp_path / "t.gguf", {"w": (raw, Q[kind])})
    got = read_back(path, "w")
    assert got.shape == (3, 512)
    np.testing.assert_allclose(got, decode_tensor(raw, kind, (3, 512)), rtol=1e-6, atol=0, err_msg=f"seed {seed}")
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


E, H, K, D, M, V, L = 64, 4, 2, 16, 256, 300, 2  # M = 256: ffn_down rows are one K-quant super-block
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


def tiny_llama_tensors(rng, kinds=(Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16, Q.BF16), tied=False, k_quants=()):
    """Tensors of a tiny Llama; ``k_quants`` (one type per layer) stores ffn_down [E, M] as raw K-quant blocks
    of entries about 0.1 in size (gguf cannot quantize K types)."""
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
        if k_quants:
            kind = k_quants[i]  # Q4_K: d * 63 * 15 ~ 0.2; Q6_K: scale bytes are random int8, so d * 127 * 32 ~ 0.2
            scale = (1e-4, 2e-4) if kind == Q.Q4_K else (2e-5, 5e-5)
            out[f"blk.{i}.ffn_down.weight"] = (synthetic_k_blocks(kind, E, M // 256, rng, scale), kind)
    return out


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_tiny_gguf_logits_match_transformers_gguf_loader(tied, tmp_path, float32_parity):
    """Q8_0, Q4_0, Q4_1, F16, BF16 and F32 tensors, and ffn_down as Q4_K (layer 0) and Q6_K (layer 1):
    logits against transformers; the K-quant weights also against the layout decoders above."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import jax.numpy as jnp
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from intern_jax.model import internlm2

    tensors = tiny_llama_tensors(np.random.default_rng(4), tied=tied, k_quants=(Q.Q4_K, Q.Q6_K))
    path = write_gguf(tmp_path / "tiny.gguf", tensors, TINY_METADATA)
    assert detect_format(path) == "gguf"
    ours = load_model(path)
    assert ours.tokenizer is None
    cfg = ours.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (L, E, H, K, D)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.tie_word_embeddings) == (V, M, tied)
    assert cfg.max_position_embeddings == 64 and cfg.rope_theta == 10000.0
    for i, kind in enumerate(("Q4_K", "Q6_K")):  # w2 is [mlp, embed]: ffn_down [E, M] transposed
        want = decode_tensor(tensors[f"blk.{i}.ffn_down.weight"][0], kind, (E, M)).T
        np.testing.assert_allclose(np.asarray(ours.params["layers"]["w2"][i]), want, rtol=1e-6, atol=0, err_msg=kind)
        assert 0.05 < np.abs(want).max() < 1.0

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
