"""The fused head + cross-entropy over vocabulary chunks against full float32 logits (optax as reference)."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from intern_jax.train.loss import OutputHead, chunked_lm_loss_sums, head_cross_entropy_sums


def _problem(seed, n=37, e=16, v=96, tied=False):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, e)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(v, e) if tied else (e, v)) * 0.7, jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    mask = jnp.asarray(rng.random(n) < 0.75, jnp.float32)
    return x, w, targets, mask


def _reference(x, w, targets, mask, tied, z_loss):
    logits = x @ (w.T if tied else w)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    lse = jax.nn.logsumexp(logits, axis=-1)
    return jnp.sum(ce * mask), jnp.sum(z_loss * lse**2 * mask)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("chunk", [1, 7, 40, 95])
def test_vocab_chunks_give_the_full_logits_loss_and_gradients(tied, chunk, seed):
    """Values and gradients (x and head) equal full logits for chunks that do not divide V=96
    (the last chunk overlaps the previous one), with masked rows and a z-loss."""
    x, w, targets, mask = _problem(seed, tied=tied)
    z_loss = 1e-2
    axis = 0 if tied else 1

    def ours(x, w):
        ce, z = head_cross_entropy_sums(x, w, targets, mask, chunk, axis, z_loss)
        return ce + 3.0 * z, (ce, z)

    def ref(x, w):
        ce, z = _reference(x, w, targets, mask, tied, z_loss)
        return ce + 3.0 * z, (ce, z)

    (_, (ce, z)), (gx, gw) = jax.jit(jax.value_and_grad(ours, argnums=(0, 1), has_aux=True))(x, w)
    (_, (rce, rz)), (rgx, rgw) = jax.value_and_grad(ref, argnums=(0, 1), has_aux=True)(x, w)
    np.testing.assert_allclose(ce, rce, rtol=1e-5, err_msg=f"seed {seed}")
    np.testing.assert_allclose(z, rz, rtol=1e-5, err_msg=f"seed {seed}")
    np.testing.assert_allclose(gx, rgx, atol=1e-4, rtol=1e-4, err_msg=f"seed {seed}")
    np.testing.assert_allclose(gw, rgw, atol=1e-4, rtol=1e-4, err_msg=f"seed {seed}")
    assert float(jnp.abs(gw).max()) > 0


def test_rows_may_keep_leading_axes(seed):
    """``x [B, T, E]`` with ``targets``/``mask [B, T]`` (as under a sequence split, where rows are not
    folded) gives the reference values and gradients of its flattened rows."""
    x, w, targets, mask = _problem(seed, n=36)
    shape = (4, 9)

    def ours(x, w):
        ce, z = head_cross_entropy_sums(x.reshape(*shape, -1), w, targets.reshape(shape), mask.reshape(shape),
                                        24, 1, 1e-2)
        return ce + z

    got, (gx, gw) = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(x, w)
    want, (rgx, rgw) = jax.value_and_grad(lambda x, w: sum(_reference(x, w, targets, mask, False, 1e-2)),
                                          argnums=(0, 1))(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"seed {seed}")
    np.testing.assert_allclose(gx, rgx, atol=1e-4, rtol=1e-4, err_msg=f"seed {seed}")
    np.testing.assert_allclose(gw, rgw, atol=1e-4, rtol=1e-4, err_msg=f"seed {seed}")


def test_a_frozen_head_still_passes_the_gradient_to_the_hidden_states(seed):
    """Differentiating only x (the head closed over, as in LoRA) gives the reference gradient."""
    x, w, targets, mask = _problem(seed)

    def ours(x):
        return head_cross_entropy_sums(x, w, targets, mask, 32, 1, 0.0)[0]

    got = jax.jit(jax.grad(ours))(x)
    want = jax.grad(lambda x: _reference(x, w, targets, mask, False, 0.0)[0])(x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"seed {seed}")


@pytest.mark.parametrize("chunk_tokens,chunk_vocab", [(0, 0), (5, 0), (5, 24), (0, 24), (5, 200)])
def test_sequence_and_vocab_chunks_compose(chunk_tokens, chunk_vocab, seed):
    """``chunked_lm_loss_sums`` with an OutputHead over [B, T] (T=13, padded last chunk) matches full logits."""
    rng = np.random.default_rng(seed)
    b, t, e, v = 2, 13, 8, 50
    hidden = jnp.asarray(rng.normal(size=(b, t, e)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(e, v)), jnp.float32)
    batch = {"targets": jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32),
             "loss_mask": jnp.asarray(rng.random((b, t)) < 0.8, jnp.float32)}

    def ours(h, w):
        ce, z, count = chunked_lm_loss_sums(h, OutputHead(w, 1), batch, 1e-3, chunk_tokens, chunk_vocab)
        return ce + z, count

    def ref(h, w):
        ce, z = _reference(h.reshape(-1, e), w, batch["targets"].reshape(-1), batch["loss_mask"].reshape(-1),
                           False, 1e-3)
        return ce + z

    (got, count), grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1), has_aux=True))(hidden, w)
    want, want_grads = jax.value_and_grad(ref, argnums=(0, 1))(hidden, w)
    assert float(count) == float(batch["loss_mask"].sum())
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"seed {seed}")
    for g, r in zip(grads, want_grads):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4, err_msg=f"seed {seed}")
