"""Pallas kernels for intern-jax, each with the plain-jnp reference it is tested against.

GPU lowering: every kernel is a portable `pl.pallas_call` + `BlockSpec` program that
passes `triton.CompilerParams`, which selects the Pallas Triton backend explicitly
(jax 0.10 and 0.11; deprecated but present in 0.11, where Mosaic GPU is the default).
Why not Mosaic GPU: its kernels are written in a different, Hopper-specific model
(`plgpu.kernel`, warpgroups, explicit TMA/barrier pipelining) that does not run under the
generic CPU interpreter CI uses, and `pallas_call` for it is itself deprecated; the
blocked Triton programs here are one source for interpret mode on CPU and compiled GPU.
`interpret=None` means interpret off-GPU, compile on GPU. TPU is not targeted: the model
uses its `impl="xla"` path there (upstream splash / paged attention could sit behind
the same signatures). Nothing here writes the KV cache or picks an `impl`.
"""

from kernels.flash_attention import attention_reference, flash_attention
from kernels.paged_attention import (
    dequantize_kv_int8,
    paged_decode_attention,
    paged_decode_reference,
    paged_prefill_attention,
    paged_prefill_reference,
    quantize_kv_int8,
)
from kernels.quantized_matmul import (
    dequantize_w4,
    dequantize_w8,
    pack_int4,
    quantize_w4,
    quantize_w8,
    quantized_matmul,
    quantized_matmul_reference,
    unpack_int4,
)

__all__ = [
    "attention_reference",
    "dequantize_kv_int8",
    "dequantize_w4",
    "dequantize_w8",
    "flash_attention",
    "pack_int4",
    "paged_decode_attention",
    "paged_decode_reference",
    "paged_prefill_attention",
    "paged_prefill_reference",
    "quantize_kv_int8",
    "quantize_w4",
    "quantize_w8",
    "quantized_matmul",
    "quantized_matmul_reference",
    "unpack_int4",
]
