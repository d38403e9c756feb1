"""Properties of the pure-functional model: caching, packing, padding, depth, remat, sharding."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax import testing
from intern_jax.config import Execution, ModelConfig, RopeScaling
from intern_jax.model import internlm2
from intern_jax.model.kv_cache import DenseKV
from intern_jax.sharding import make_mesh
from intern_jax.testing import tiny_config


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=131, num_layers=3, attention_bias=True, max_position_embeddings=256)
    return tiny_config(**{**base, **kw})


def random_params(cfg, seed=0):
    return testing.random_params(cfg, seed, scale=0.1, norm_scale=0.1)


fwd = internlm2.forward_jit


def tokens(cfg, shape, seed=3):
    return jax.random.randint(jax.random.key(seed), shape, 0, cfg.vocab_size, dtype=jnp.int32)


@pytest.mark.parametrize("scaling", [RopeScaling(), RopeScaling("linear", 2.0)])
def test_kv_cache_decode_matches_full_forward(scaling):
    cfg = tiny(rope_scaling=scaling)
    params = random_params(cfg)
    toks = tokens(cfg, (2, 11))
    full, _ = fwd(params, {"tokens": toks}, cfg)

    cache = DenseKV.init(cfg, batch_size=2, capacity=16)
    pieces = []
    logits, cache = fwd(params, {"tokens": toks[:, :6]}, cfg, cache)
    pieces.append(logits)
    for i in range(6, 11):
        batch = {"tokens": toks[:, i : i + 1], "positions": jnp.full((2, 1), i, jnp.int32)}
        logits, cache = fwd(params, batch, cfg, cache)
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(cache.lengths, [11, 11])


def test_packed_rows_equal_documents_run_separately():
    cfg = tiny()
    params = random_params(cfg)
    docs = [tokens(cfg, (n,), seed=n) for n in (5, 9, 3)]
    packed = jnp.concatenate(docs + [jnp.zeros((2,), jnp.int32)])[None]  # 2 padding tokens
    seg = jnp.concatenate([jnp.full((len(d),), i + 1) for i, d in enumerate(docs)] + [jnp.zeros((2,))])
    pos = jnp.concatenate([jnp.arange(len(d)) for d in docs] + [jnp.zeros((2,))])
    batch = {"tokens": packed, "segment_ids": seg[None].astype(jnp.int32), "positions": pos[None].astype(jnp.int32)}
    logits, _ = fwd(params, batch, cfg)
    start = 0
    for d in docs:
        alone, _ = fwd(params, {"tokens": d[None]}, cfg)
        np.testing.assert_allclose(logits[0, start : start + len(d)], alone[0], atol=1e-5, rtol=1e-5)
        start += len(d)
    assert np.isfinite(np.asarray(logits)).all()


def test_right_padding_does_not_change_valid_logits():
    cfg = tiny()
    params = random_params(cfg)
    toks = tokens(cfg, (1, 7))
    padded = jnp.concatenate([toks, jnp.zeros((1, 5), jnp.int32)], axis=1)
    seg = jnp.array([[1] * 7 + [0] * 5], jnp.int32)
    a, _ = fwd(params, {"tokens": toks}, cfg)
    b, _ = fwd(params, {"tokens": padded, "segment_ids": seg}, cfg)
    np.testing.assert_allclose(b[:, :7], a, atol=1e-5, rtol=1e-5)


def test_cache_rows_of_different_lengths_continue_independently():
    cfg = tiny()
    params = random_params(cfg)
    a, b = tokens(cfg, (4,), seed=1), tokens(cfg, (7,), seed=2)
    prompt = jnp.stack([jnp.pad(a, (0, 3)), b])
    seg = jnp.array([[1] * 4 + [0] * 3, [1] * 7], jnp.int32)
    cache = DenseKV.init(cfg, 2, 12)
    _, cache = fwd(params, {"tokens": prompt, "segment_ids": seg}, cfg, cache)
    nxt = jnp.array([[5], [6]], jnp.int32)
    step, cache = fwd(params, {"tokens": nxt, "positions": jnp.array([[4], [7]])}, cfg, cache)
    ref_a, _ = fwd(params, {"tokens": jnp.concatenate([a, nxt[0]])[None]}, cfg)
    ref_b, _ = fwd(params, {"tokens": jnp.concatenate([b, nxt[1]])[None]}, cfg)
    np.testing.assert_allclose(step[0, 0], ref_a[0, -1], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(step[1, 0], ref_b[0, -1], atol=1e-5, rtol=1e-5)


def test_compiled_program_size_does_not_grow_with_depth():
    def hlo_size(layers):
        cfg = tiny(num_layers=layers)
        abstract = internlm2.abstract(cfg)
        batch = {"tokens": jax.ShapeDtypeStruct((1, 8), jnp.int32)}
        return len(jax.jit(lambda p, b: internlm2.forward(p, b, cfg)[0]).lower(abstract, batch).as_text())

    small, deep = hlo_size(2), hlo_size(24)
    assert abs(deep - small) / small < 0.02, (small, deep)


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_policies_give_identical_gradients(remat):
    cfg = tiny()
    params = random_params(cfg)
    toks = tokens(cfg, (2, 9))

    def loss(p, e):
        logits, _ = internlm2.forward(p, {"tokens": toks}, cfg, execution=e)
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g0 = grad(params, Execution())
    g1 = grad(params, Execution(remat=remat))
    for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_only_the_remat_policy_puts_the_layers_under_checkpoint(remat):
    """Nothing in the layers wraps itself in jax.checkpoint: with remat="none" the backward pass
    recomputes nothing; "dots" puts each layer under one checkpoint with its policy."""
    cfg, run = tiny(), Execution(remat=remat)
    jaxpr = str(jax.make_jaxpr(lambda p: internlm2.forward(p, {"tokens": tokens(cfg, (1, 5))}, cfg, execution=run)[0])(
        random_params(cfg)))
    checkpoints = re.findall(r"= (?:remat2|checkpoint)\[", jaxpr)  # jax.checkpoint's primitive (named remat2)
    assert len(checkpoints) == (remat != "none")


def test_full_remat_in_bf16_with_a_frozen_part_matches_no_remat():
    """remat="full" (layer inputs kept as raw 16-bit words, gradients only for differentiated leaves)
    gives the gradients of no remat, for bfloat16 compute over packed rows, when only some weights
    are differentiated and the rest are closed over."""
    cfg, bf16 = tiny(), Execution(dtype="bfloat16")
    params = random_params(cfg)
    toks = tokens(cfg, (2, 12))
    seg = jnp.asarray([[1] * 5 + [2] * 7, [1] * 10 + [0] * 2], jnp.int32)
    pos = jnp.asarray([list(range(5)) + list(range(7)), list(range(10)) + [0, 0]], jnp.int32)
    batch = {"tokens": toks, "segment_ids": seg, "positions": pos}

    def loss(trained, e):
        p = {**params, "layers": {**params["layers"], **trained}}
        logits, _ = internlm2.forward(p, batch, cfg, execution=e)
        return jnp.sum(jax.nn.logsumexp(logits, -1) * (seg != 0))

    trained = {k: params["layers"][k] for k in ("w1", "wo", "ffn_norm")}
    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (v0, g0), (v1, g1) = grad(trained, bf16), grad(trained, dataclasses.replace(bf16, remat="full"))
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    for name in trained:
        scale = float(jnp.abs(g0[name]).max())
        assert scale > 0
        np.testing.assert_allclose(np.asarray(g1[name]) / scale, np.asarray(g0[name]) / scale, atol=1e-2, err_msg=name)


def test_init_with_mesh_shards_every_large_param():
    cfg = tiny(num_heads=4, num_kv_heads=2, hidden_size=64, intermediate_size=128, vocab_size=256)
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    params = internlm2.init(cfg, jax.random.key(0), mesh)
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        shard = x.addressable_shards[0].data.shape
        if x.size >= 64 * 64:
            assert np.prod(shard) <= x.size // 4, (jax.tree_util.keystr(path), x.shape, shard)
    single = internlm2.init(cfg, jax.random.key(0))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(single)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sharded_forward_matches_single_device():
    cfg = tiny(vocab_size=256)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = random_params(cfg)
    shardings = internlm2.param_shardings(cfg, mesh)
    sharded = jax.device_put(params, shardings)
    toks = tokens(cfg, (4, 10))
    fwd = jax.jit(lambda p, t: internlm2.forward(p, {"tokens": t}, cfg)[0])
    np.testing.assert_allclose(fwd(sharded, toks), fwd(params, toks), atol=1e-5, rtol=1e-5)


def test_7b_abstract_params_allocate_nothing_and_count_matches_published():
    from intern_jax.config import load_config

    cfg = load_config("configs/model/internlm2_7b.py")
    tree = internlm2.abstract(cfg)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))
    assert internlm2.count_params(cfg) == 7_737_708_544


def test_pallas_attention_gives_xla_logits_and_gradients():
    cfg = tiny(num_layers=2)
    params = random_params(cfg)
    seg = jnp.array([[1] * 6 + [2] * 7 + [0] * 3, [1] * 16], jnp.int32)
    pos = jnp.array([list(range(6)) + list(range(7)) + [0] * 3, list(range(16))], jnp.int32)
    batch = {"tokens": tokens(cfg, (2, 16)), "segment_ids": seg, "positions": pos}
    def loss(p, e):
        logits, _ = internlm2.forward(p, batch, cfg, execution=e)
        return jnp.sum(jnp.where(seg[..., None] > 0, jax.nn.log_softmax(logits), 0.0)), logits

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    g_xla, l_xla = grad(params, Execution())
    g_pallas, l_pallas = grad(params, Execution(attention_impl="pallas"))
    np.testing.assert_allclose(l_pallas, l_xla, atol=1e-4, rtol=1e-4)
    for x, y in zip(jax.tree.leaves(g_pallas), jax.tree.leaves(g_xla)):
        np.testing.assert_allclose(x, y, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("block", [1, 5, 16])
def test_query_blocks_give_whole_attention_logits_and_gradients(block):
    """attention_chunk > 0 (strided query blocks under checkpoint, padded when they do not divide
    the length) gives the logits and gradients of all queries at once, with packed documents and
    padding; the reference is the same model with attention_chunk=0."""
    cfg = tiny(num_layers=2)
    params = random_params(cfg)
    seg = jnp.array([[1] * 6 + [2] * 7 + [0] * 4, [1] * 17], jnp.int32)
    pos = jnp.array([list(range(6)) + list(range(7)) + [0] * 4, list(range(17))], jnp.int32)
    batch = {"tokens": tokens(cfg, (2, 17)), "segment_ids": seg, "positions": pos}

    def loss(p, e):
        logits, _ = internlm2.forward(p, batch, cfg, execution=e)
        return jnp.sum(jnp.where(seg[..., None] > 0, jax.nn.log_softmax(logits), 0.0)), logits

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    g_all, l_all = grad(params, Execution())
    g_blocks, l_blocks = grad(params, Execution(attention_chunk=block))
    np.testing.assert_allclose(l_blocks, l_all, atol=1e-5, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(g_blocks), jax.tree.leaves(g_all)):  # key gradients add up per block
        np.testing.assert_allclose(x, y, atol=5e-5, rtol=1e-4)
