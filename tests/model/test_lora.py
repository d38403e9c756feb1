"""LoRA adapters on the model: identity at init, gradients only into adapters, merge equivalence, PEFT init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.model import internlm2
from intern_jax.model import lora as L
from intern_jax.model import qlora as Q
from intern_jax.testing import assert_close, fast_jit, random_params, tiny_config

CFG = tiny_config(attention_bias=True, num_layers=2)
LORA = L.LoraConfig(rank=4, alpha=8.0)


def _batch(seed, b=2, t=10):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (b, t), dtype=np.int32)
    segment_ids = np.ones((b, t), np.int32)
    segment_ids[1, -3:] = 0  # padding
    return {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(segment_ids)}


_forward = fast_jit(lambda p, batch: internlm2.forward(p, batch, CFG)[0])


def _perturbed(adapters, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.05 * jnp.asarray(rng.standard_normal(x.shape), x.dtype), adapters)


def test_fresh_adapters_leave_logits_unchanged():
    params = random_params(CFG, seed=1)
    adapters = L.init_lora(params, LORA, jax.random.key(1))
    batch = _batch(1)
    np.testing.assert_array_equal(_forward(L.apply_lora(params, adapters, LORA), batch), _forward(params, batch))


def test_init_follows_peft_kaiming_uniform_a_and_zero_b():
    params = random_params(CFG)
    adapters = L.init_lora(params, L.LoraConfig(rank=8, targets=r"layers/w2"), jax.random.key(2))
    a, b = np.asarray(adapters["layers"]["w2"]["a"]), np.asarray(adapters["layers"]["w2"]["b"])
    bound = 1 / np.sqrt(CFG.intermediate_size)  # torch kaiming_uniform_(a=sqrt(5)) on [r, in]
    assert a.shape == (CFG.num_layers, CFG.intermediate_size, 8) and b.shape == (CFG.num_layers, 8, CFG.hidden_size)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound
    assert abs(a.std() - bound / np.sqrt(3)) < 0.1 * bound  # uniform, not normal
    assert not b.any()


def test_gradients_reach_only_the_adapters():
    params = random_params(CFG, seed=3)
    adapters = _perturbed(L.init_lora(params, LORA, jax.random.key(3)), 3)
    batch = _batch(3)

    def loss(adapters, params):
        return jnp.mean(internlm2.forward(L.apply_lora(params, adapters, LORA), batch, CFG)[0] ** 2)

    g_adapters, g_params = fast_jit(jax.grad(loss, argnums=(0, 1)))(adapters, params)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(g_adapters))
    # only what the adapters touch matters to their gradient: changing untargeted leaves' values changes
    # nothing structural, but the base weights must get no optimizer state: grad w.r.t. adapters only
    assert jax.tree.structure(g_adapters) == jax.tree.structure(adapters)
    # and the adapter gradient equals a finite difference along a random direction
    direction = _perturbed(jax.tree.map(jnp.zeros_like, adapters), 4)
    eps = 1e-3
    plus = loss(jax.tree.map(lambda a, d: a + eps * d, adapters, direction), params)
    minus = loss(jax.tree.map(lambda a, d: a - eps * d, adapters, direction), params)
    fd = (plus - minus) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(g_adapters), jax.tree.leaves(direction)))
    assert abs(float(fd) - float(analytic)) <= 2e-3 * max(1.0, abs(float(fd)))
    assert g_params is not None  # params differentiable too, but the trainer passes them as frozen


def test_merged_and_unmerged_logits_agree():
    params = random_params(CFG, seed=5)
    adapters = _perturbed(L.init_lora(params, LORA, jax.random.key(5)), 5)
    adapted = L.apply_lora(params, adapters, LORA)
    merged = L.merge_lora(adapted)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    batch = _batch(5)
    out = _forward(adapted, batch)
    assert np.abs(np.asarray(out - _forward(params, batch))).max() > 1e-2  # the adapters do something
    assert_close(_forward(merged, batch), out, 1e-5, "merged vs unmerged")


def test_lora_equals_explicit_low_rank_update_per_weight():
    """x @ W + alpha/r * x @ A @ B for wo, whose input is the flattened heads."""
    params = random_params(CFG, seed=6)
    lora = L.LoraConfig(rank=2, alpha=6.0, targets=r"layers/wo")
    adapters = _perturbed(L.init_lora(params, lora, jax.random.key(6)), 6)
    w = np.asarray(params["layers"]["wo"][0]).reshape(-1, CFG.hidden_size)
    a, b = (np.asarray(adapters["layers"]["wo"][k][0]) for k in "ab")
    layer0 = L.LoraWeight(params["layers"]["wo"][0], adapters["layers"]["wo"]["a"][0],
                          adapters["layers"]["wo"]["b"][0], scale=lora.scale).reshape(-1, CFG.hidden_size)
    x = np.random.default_rng(6).standard_normal((3, w.shape[0])).astype(np.float32)
    from intern_jax.model.layers import linear

    assert_close(linear(jnp.asarray(x), layer0), x @ w + 3.0 * (x @ a) @ b, 1e-5, "wo")


def test_lora_over_quantized_base_matches_merged_dequantized():
    params = random_params(CFG, seed=7)
    quantized = Q.quantize_params(params, "nf4", double_quant=True)
    adapters = _perturbed(L.init_lora(quantized, LORA, jax.random.key(7)), 7)
    adapted = L.apply_lora(quantized, adapters, LORA)
    batch = _batch(7)
    assert_close(_forward(L.merge_lora(adapted), batch), _forward(adapted, batch), 1e-5, "qlora merged")


def test_dropout_only_with_a_key_and_scales_kept_units():
    params = random_params(CFG, seed=8)
    lora = L.LoraConfig(rank=4, alpha=8.0, dropout=0.5)
    adapters = _perturbed(L.init_lora(params, lora, jax.random.key(8)), 8)
    batch = _batch(8)
    plain = _forward(L.apply_lora(params, adapters, lora), batch)
    no_dropout = _forward(L.apply_lora(params, adapters, L.LoraConfig(rank=4, alpha=8.0)), batch)
    np.testing.assert_array_equal(plain, no_dropout)
    d1 = _forward(L.apply_lora(params, adapters, lora, dropout_key=jax.random.key(1)), batch)
    d2 = _forward(L.apply_lora(params, adapters, lora, dropout_key=jax.random.key(2)), batch)
    assert np.abs(np.asarray(d1 - plain)).max() > 1e-3 and np.abs(np.asarray(d1 - d2)).max() > 1e-3


@pytest.mark.parametrize(
    "targets, message",
    [(r"layers/attention_norm", "cannot carry adapters"), (r"wq", "match no parameter"), (r"(", "not a valid regex")],
)
def test_bad_targets_are_explained(targets, message):
    params = random_params(CFG)
    with pytest.raises(ValueError, match=message):
        L.init_lora(params, L.LoraConfig(targets=targets), jax.random.key(0))
