"""Language-model loss sums with the output head fused in, so full ``[tokens, vocab]`` logits never exist.

``chunked_lm_loss_sums`` runs the head and the cross-entropy over chunks of sequence positions
(``chunk_tokens``) and, given the head weight itself, over chunks of the vocabulary
(``chunk_vocab``): ``head_cross_entropy_sums`` keeps a running max / sum of exponentials per row
and has its own backward pass that recomputes one vocabulary chunk of logits at a time, writing
the head's gradient in place. Peak memory is then ``chunk_tokens x chunk_vocab`` floats instead
of ``tokens x vocab``. The sums are those of ``lm_loss_sums`` up to float rounding; this module
does not know about model layouts, meshes or optimizers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from intern_jax.model import layers


@dataclasses.dataclass(frozen=True)
class OutputHead:
    """The output projection: ``weight`` is ``[E, V]`` (``vocab_axis=1``) or tied ``[V, E]`` (``vocab_axis=0``)."""

    weight: Any
    vocab_axis: int = 1

    def logits(self, x):
        return layers.output_logits(x, self.weight, self.vocab_axis)

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[self.vocab_axis]


def lm_loss_sums(logits, batch, z_loss: float = 0.0):
    """Masked sums over ``[B, T]``: cross-entropy, z-loss term and the token count."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"].astype(jnp.float32)
    ce = jnp.sum((lse - target_logit) * mask)
    z = jnp.sum(z_loss * jnp.square(lse) * mask) if z_loss else jnp.zeros((), jnp.float32)
    return ce, z, jnp.sum(mask)


# ---------------------------------------------------------------------------
# Head + cross-entropy over vocabulary chunks


def _chunk_starts(vocab: int, chunk: int) -> tuple[int, int]:
    return -(-vocab // chunk), vocab - chunk  # number of chunks, last valid start


def _chunk(x, w, start, chunk: int, vocab_axis: int):
    """``x`` and the weight's columns ``start:start + chunk``.

    The barrier ties the slice to the loop step and to ``x``: the compiler cannot hoist a
    whole-weight copy out of the loop (XLA:CPU widens a bfloat16 head to float32), and partial
    evaluation cannot precompute every chunk of the weight as a stacked residual.
    """
    x, w, start = jax.lax.optimization_barrier((x, w, start))
    return x, jax.lax.dynamic_slice_in_dim(w, start, chunk, axis=vocab_axis)


def _chunk_logits(x, w_c, vocab_axis: int):
    spec = "...e,ev->...v" if vocab_axis == 1 else "...e,ve->...v"
    return jnp.einsum(spec, x, w_c, preferred_element_type=jnp.float32)


def _columns(i, chunk: int, last_start: int):
    """Start of chunk ``i`` (the last one is moved back to fit) and which of its columns are new."""
    start = jnp.minimum(i * chunk, last_start)
    cols = start + jnp.arange(chunk)
    return start, cols, cols >= i * chunk


def _lse_and_target(x, w, targets, chunk: int, vocab_axis: int):
    vocab = w.shape[vocab_axis]
    n_chunks, last_start = _chunk_starts(vocab, chunk)
    rows = x.shape[:-1]

    def body(i, carry):
        m, s, t = carry
        start, cols, new = _columns(i, chunk, last_start)
        xb, w_c = _chunk(x, w, start, chunk, vocab_axis)
        logits = _chunk_logits(xb, w_c, vocab_axis)
        logits = jnp.where(new, logits, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new[..., None]), axis=-1)
        hit = (cols == targets[..., None]) & new
        t = t + jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
        return m_new, s, t

    init = (jnp.full(rows, -jnp.inf, jnp.float32), jnp.zeros(rows, jnp.float32), jnp.zeros(rows, jnp.float32))
    m, s, t = jax.lax.fori_loop(0, n_chunks, body, init)
    return m + jnp.log(s), t


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def head_cross_entropy_sums(x, w, targets, mask, chunk: int, vocab_axis: int, z_loss: float):
    """``(sum(CE * mask), sum(z_loss * lse^2 * mask))`` of ``logits = x @ head`` over rows of ``x [..., E]``.

    ``w`` is the head weight (``[E, V]`` or, with ``vocab_axis=0``, ``[V, E]``), ``targets [...]``
    int32, ``mask [...]``. Logits exist ``chunk`` vocabulary columns at a time, in float32; the
    backward pass recomputes them chunk by chunk (no residual is larger than ``x`` and ``w``) and
    computes the head's gradient only when ``w`` is differentiated (a frozen head costs nothing).
    """
    lse, t = _lse_and_target(x, w, targets, chunk, vocab_axis)
    return _sums(lse, t, mask, z_loss)


def _sums(lse, t, mask, z_loss):
    mask = mask.astype(jnp.float32)
    ce = jnp.sum((lse - t) * mask)
    z = jnp.sum(z_loss * jnp.square(lse) * mask) if z_loss else jnp.zeros((), jnp.float32)
    return ce, z


def _head_ce_fwd(x, w, targets, mask, chunk, vocab_axis, z_loss):
    # symbolic_zeros: each argument arrives as CustomVJPPrimal(value, perturbed); which gradients are
    # wanted is recorded in the residuals' structure (dict keys), so it stays static
    wanted = {name: () for name, arg in (("x", x), ("w", w)) if arg.perturbed}
    x, w, targets, mask = x.value, w.value, targets.value, mask.value
    lse, t = _lse_and_target(x, w, targets, chunk, vocab_axis)
    return _sums(lse, t, mask, z_loss), (x, w, targets, mask, lse, wanted)


def _ct(g):
    return jnp.zeros((), jnp.float32) if isinstance(g, jax.custom_derivatives.SymbolicZero) else g


def _head_ce_bwd(chunk, vocab_axis, z_loss, res, cts):
    x, w, targets, mask, lse, wanted = res
    g_ce, g_z = (_ct(g) for g in cts)
    mask_f = mask.astype(jnp.float32)
    # d/dlogits of (lse - t) * mask * g_ce + z * lse^2 * mask * g_z: softmax * d_lse - onehot * d_t
    d_lse = mask_f * (g_ce + (2.0 * z_loss * g_z * lse if z_loss else 0.0))
    d_t = mask_f * g_ce
    vocab = w.shape[vocab_axis]
    n_chunks, last_start = _chunk_starts(vocab, chunk)
    want_x, want_w = "x" in wanted, "w" in wanted

    def body(i, carry):
        dx, dw = carry
        start, cols, new = _columns(i, chunk, last_start)
        xb, w_c = _chunk(x, w, start, chunk, vocab_axis)
        logits = _chunk_logits(xb, w_c, vocab_axis)
        probs = jnp.exp(logits - lse[..., None])
        hit = (cols == targets[..., None]).astype(jnp.float32)
        d_logits = jnp.where(new, probs * d_lse[..., None] - hit * d_t[..., None], 0.0).astype(x.dtype)
        w_spec = "ev" if vocab_axis == 1 else "ve"
        if want_x:
            dx = dx + jnp.einsum(f"...v,{w_spec}->...e", d_logits, w_c, preferred_element_type=jnp.float32)
        if want_w:
            dw_c = jnp.einsum(f"...e,...v->{w_spec}", x, d_logits, preferred_element_type=jnp.float32)
            # overlapping columns of the last chunk got zero d_logits, so adding is exact
            old = jax.lax.dynamic_slice_in_dim(dw, start, chunk, axis=vocab_axis)
            dw = jax.lax.dynamic_update_slice_in_dim(dw, old + dw_c.astype(dw.dtype), start, axis=vocab_axis)
        return dx, dw

    init = (jnp.zeros(x.shape if want_x else (), jnp.float32), jnp.zeros(w.shape if want_w else (), w.dtype))
    dx, dw = jax.lax.fori_loop(0, n_chunks, body, init)
    return (dx.astype(x.dtype) if want_x else None), (dw if want_w else None), None, None


head_cross_entropy_sums.defvjp(_head_ce_fwd, _head_ce_bwd, symbolic_zeros=True)


# ---------------------------------------------------------------------------
# Sequence chunks


def chunked_lm_loss_sums(hidden, head: OutputHead | Callable, batch, z_loss: float = 0.0, chunk_tokens: int = 0,
                         chunk_vocab: int = 0):
    """``lm_loss_sums(logits of hidden, batch, z_loss)`` without holding ``[B, T, V]`` logits.

    ``head`` is an ``OutputHead`` or any ``hidden -> logits`` function. ``hidden [B, T, E]`` is
    cut into ``n = ceil(T / chunk_tokens)`` chunks of ``chunk_tokens`` positions of every row,
    strided: chunk ``j`` holds positions ``j, j + n, j + 2n, ...`` (the sequence is padded with
    masked positions to a multiple of ``n``). A strided chunk spans the whole sequence, so when the
    positions are split over sequence-parallel devices every device holds its share of every
    chunk and the loop needs no communication. ``lax.scan`` runs the head and the loss one chunk at a time
    under ``jax.checkpoint``, so the backward pass recomputes each chunk's logits instead of
    storing them. With an ``OutputHead`` and ``0 < chunk_vocab < vocab``, each chunk's logits are
    further computed ``chunk_vocab`` columns at a time (``head_cross_entropy_sums``).
    ``chunk_tokens <= 0`` or ``>= T`` takes the whole sequence as one chunk.
    """
    b, t = hidden.shape[:2]
    fused = isinstance(head, OutputHead) and 0 < chunk_vocab < head.vocab_size
    logits_fn = head.logits if isinstance(head, OutputHead) else head

    def sums(x, targets, m):
        if fused:
            return head_cross_entropy_sums(layers.rows(x), head.weight.astype(x.dtype), layers.rows(targets, 0),
                                           layers.rows(m, 0), chunk_vocab, head.vocab_axis, float(z_loss))
        ce, z, _ = lm_loss_sums(logits_fn(x), {"targets": targets, "loss_mask": m}, z_loss)
        return ce, z

    mask = batch["loss_mask"].astype(jnp.float32)
    if chunk_tokens <= 0 or chunk_tokens >= t:
        ce, z = sums(hidden, batch["targets"], mask)
        return ce, z, jnp.sum(mask)
    n = -(-t // chunk_tokens)
    pad = n * chunk_tokens - t

    def split(x):
        if pad:
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(b, chunk_tokens, n, *x.shape[2:]), 2, 0)

    chunks = (split(hidden), split(batch["targets"]), split(mask))
    chunk_sums = jax.checkpoint(sums, prevent_cse=False)

    def body(carry, xs):
        ce, z = chunk_sums(*xs)
        return (carry[0] + ce, carry[1] + z), None

    zero = jnp.zeros((), jnp.float32)
    (ce, z), _ = jax.lax.scan(body, (zero, zero), chunks)
    return ce, z, jnp.sum(mask)
