"""Rematerialization policies: what the backward pass of a stack of layers keeps and what it recomputes.

``scan_layers(layer, x, blocks, remat)`` runs ``x = layer(x, p)`` over blocks stacked on a leading
``layers`` axis under ``lax.scan`` with one of the policies in ``REMAT_POLICIES``:

- ``none``: keep every intermediate the backward pass needs (no recompute);
- ``dots``: keep the outputs of the matrix products, recompute the elementwise ops between them
  (normalisation, rotary, the SwiGLU gate, softmax); on CPU this is usually the fastest, since storing
  and reloading ``[tokens, intermediate]`` elementwise results costs more than recomputing them;
- ``dots_no_batch``: as ``dots``, but products with batch dimensions (attention scores) are recomputed;
- ``full``: keep only each layer's input and recompute the whole layer (``remat_scan``).

This is the one place where such choices are made: layer code computes and never wraps itself in
``jax.checkpoint``. Backend-specific formulations of a policy (``remat_scan``'s raw 16-bit stack for
XLA:CPU) live here too and say so.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from intern_jax.config import REMAT_POLICIES

# remat="full" is remat_scan; these policies go to jax.checkpoint around each layer
_CHECKPOINT_POLICIES: dict[str, Callable] = {
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def scan_layers(layer, x, blocks, remat: str = "none"):
    """``x`` after ``layer(x, p)`` for each layer ``p`` of the stacked ``blocks``, under policy ``remat``."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}; use one of {', '.join(REMAT_POLICIES)}")
    if remat == "full":
        return remat_scan(layer, x, blocks)
    body = lambda x, p: (layer(x, p), None)  # noqa: E731
    if remat != "none":
        body = jax.checkpoint(body, policy=_CHECKPOINT_POLICIES[remat], prevent_cse=False)
    return jax.lax.scan(body, x, blocks)[0]


def _as_bits(x):
    """Floats of 16 bits as uint16 (bit-exact); others unchanged."""
    return jax.lax.bitcast_convert_type(x, jnp.uint16) if jnp.issubdtype(x.dtype, jnp.floating) and \
        x.dtype.itemsize == 2 else x


def _from_bits(bits, dtype):
    return jax.lax.bitcast_convert_type(bits, dtype) if bits.dtype != dtype else bits


def remat_scan(layer, x, blocks):
    """``lax.scan`` of ``x = layer(x, p)`` over stacked ``blocks``, saving only each layer's input.

    The same computation as ``jax.checkpoint`` (no policy) under ``lax.scan``: the forward pass keeps
    the ``[layers, ...]`` stack of layer inputs, the backward pass recomputes one layer at a time
    and takes its vjp. The stack is kept as raw bits, so compilers that widen 16-bit floats for
    their loop bodies (XLA:CPU) cannot hold a float32 copy of it; and gradients are computed only
    for the leaves of ``blocks`` that are differentiated (frozen or quantized weights cost nothing).
    ``layer`` may close over arrays that are not differentiated (rotary tables, segment ids).
    """
    leaves, treedef = jax.tree.flatten(blocks)

    def run(x, *leaves):
        step = lambda c, p: (layer(c, jax.tree.unflatten(treedef, p)), None)  # noqa: E731
        return jax.lax.scan(step, x, list(leaves))[0]

    def fwd(x, *leaves):
        # symbolic_zeros: arguments arrive as CustomVJPPrimal(value, perturbed); which leaves want a
        # gradient is kept static in the residuals' structure (None or not)
        wanted = [() if a.perturbed else None for a in leaves]
        x, leaves = x.value, [a.value for a in leaves]

        def step(c, p):
            return layer(c, jax.tree.unflatten(treedef, p)), _as_bits(c)

        y, saved = jax.lax.scan(step, x, leaves)
        return y, (saved, leaves, wanted)

    def bwd(res, ct):
        saved, leaves, wanted = res
        diff = [i for i, w in enumerate(wanted) if w is not None]
        if isinstance(ct, jax.custom_derivatives.SymbolicZero):
            ct = jnp.zeros(ct.shape, ct.dtype)
        dtype = ct.dtype  # the layers keep x's dtype, so its cotangent has it too

        def step(ct_x, xs):
            bits, p = xs
            x = _from_bits(bits, dtype)

            def f(x, p_diff):
                full = list(p)
                for i, v in zip(diff, p_diff):
                    full[i] = v
                return layer(x, jax.tree.unflatten(treedef, full))

            _, vjp = jax.vjp(f, x, [p[i] for i in diff])
            d_x, d_p = vjp(ct_x)
            return d_x, d_p

        d_x, d_stacked = jax.lax.scan(step, ct, (saved, leaves), reverse=True)
        grads = [None] * len(leaves)
        for i, g in zip(diff, d_stacked):
            grads[i] = g
        return (d_x, *grads)

    fn = jax.custom_vjp(run)
    fn.defvjp(fwd, bwd, symbolic_zeros=True)
    return fn(x, *leaves)
