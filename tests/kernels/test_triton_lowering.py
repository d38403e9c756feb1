"""Every kernel lowers through the Pallas Triton backend for CUDA (no GPU needed).

Exporting for platform "cuda" runs the Pallas -> Triton IR lowering on this machine, so
CI catches kernels that would only work in interpret mode. Compiling the Triton IR to
PTX and running it needs the GPU machine (`scripts/bench/kernel_speed.py`).
"""

import jax
import jax.numpy as jnp
import pytest

from kernels import (
    flash_attention,
    paged_decode_attention,
    paged_prefill_attention,
    quantized_matmul,
)

S = jax.ShapeDtypeStruct
BF16 = jnp.bfloat16


def lower_for_cuda(f, *args):
    """Export `f` for CUDA; returns the number of Triton kernels in the module."""
    exported = jax.export.export(
        jax.jit(f),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*args)
    return exported.mlir_module().count("__gpu$xla.gpu.triton")


@pytest.mark.parametrize("heads,kv_heads,seq,head_dim", [(4, 2, 300, 64), (6, 2, 256, 128)])
def test_flash_attention_forward_and_backward_lower_to_triton(heads, kv_heads, seq, head_dim):
    def loss(q, k, v, seg):
        out = flash_attention(q, k, v, segment_ids=seg, interpret=False)
        return out.astype(jnp.float32).sum()

    q = S((2, seq, heads, head_dim), BF16)
    kv = S((2, seq, kv_heads, head_dim), BF16)
    grad = jax.grad(loss, argnums=(0, 1, 2))
    assert lower_for_cuda(grad, q, kv, kv, S((2, seq), jnp.int32)) == 3  # fwd, dkdv, dq


@pytest.mark.parametrize("int8", [False, True])
def test_paged_attention_lowers_to_triton(int8):
    kv_heads, num_pages, page, d, batch = 2, 64, 16, 128, 3
    page_dtype = jnp.int8 if int8 else BF16
    pages = S((kv_heads, num_pages, page, d), page_dtype)
    scales = S((kv_heads, num_pages, page), jnp.float32)
    tables, lengths = S((batch, 7), jnp.int32), S((batch,), jnp.int32)

    def decode(q, k, v, t, n, ks, vs):
        kw = dict(k_scales=ks, v_scales=vs) if int8 else {}
        return paged_decode_attention(q, k, v, t, n, interpret=False, **kw)

    def prefill(q, k, v, t, n, ks, vs):
        kw = dict(k_scales=ks, v_scales=vs) if int8 else {}
        return paged_prefill_attention(q, k, v, t, n, interpret=False, **kw)

    rest = (pages, pages, tables, lengths, scales, scales)
    assert lower_for_cuda(decode, S((batch, 8, d), BF16), *rest) == 1
    assert lower_for_cuda(prefill, S((batch, 9, 8, d), BF16), *rest) == 1


@pytest.mark.parametrize("m", [1, 16])
def test_quantized_matmul_lowers_to_triton(m):
    k, n = 4096, 14336
    x = S((m, k), BF16)
    w8 = lambda x, w, s: quantized_matmul(x, w, s, bits=8, interpret=False)
    assert lower_for_cuda(w8, x, S((k, n), jnp.int8), S((n,), BF16)) == 1
    w4 = lambda x, w, s, z: quantized_matmul(x, w, s, z, bits=4, interpret=False)
    groups = S((k // 128, n), BF16)
    assert lower_for_cuda(w4, x, S((k // 2, n), jnp.uint8), groups, S((k // 128, n), jnp.uint8)) == 1
