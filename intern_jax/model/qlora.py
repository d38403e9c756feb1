"""Frozen base weights held quantized (NF4 or int8, block-wise absmax) and dequantized on the fly.

``QuantizedWeight`` is a registered pytree that ``layers.linear`` multiplies by dequantizing
inside the layer (under ``lax.scan`` only one layer's weights exist in full precision at a time).
NF4 follows the QLoRA paper: blocks of 64 values scaled by their absmax and rounded to the
nearest of 16 normal-quantile codes; double quantization stores those absmax scales as int8
(linear, blocks of 256, after subtracting their mean; the paper uses an 8-bit float there).
int8 is symmetric absmax rounding per block. Quantized weights are never trained; adapters
(lora.py) sit on top of them. No fused kernel here: dequantize, then the ordinary matmul.
"""

from __future__ import annotations

import dataclasses
import math
import re
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from intern_jax.model import layers

KINDS = ("nf4", "int8")

# The 16 NF4 levels of the QLoRA paper (Dettmers et al. 2023, appendix E; bitsandbytes' table):
# quantiles of N(0, 1), normalised to [-1, 1], with an exact zero.
NF4_CODES = np.array(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    np.float32,
)
_NF4_MIDPOINTS = (NF4_CODES[1:] + NF4_CODES[:-1]) / 2
SCALE_BLOCK = 256  # double quantization: absmax scales per second-level block


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["codes", "scales", "scale_codes", "scale_scales", "scale_offset"],
    meta_fields=["kind", "value_shape", "block", "dtype"],
)
@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """A weight ``[*lead, *value_shape]`` as block codes; ``lead`` axes (e.g. ``layers``) are kept as is.

    codes: nf4 ``[*lead, blocks, block // 2]`` uint8 (two 4-bit code indices per byte, first
    value in the high nibble) or int8 ``[*lead, blocks, block]``; scales ``[*lead, blocks]``
    float32 block absmax, or with double quantization ``scales=None`` and
    ``scale_codes [*lead, blocks2, 256]`` int8, ``scale_scales [*lead, blocks2]``,
    ``scale_offset [*lead]``. Blocks run over the flattened ``value_shape`` (zero padded at its end).
    ``dtype`` is what ``dequantize`` returns (``astype`` changes only that).
    """

    codes: Any
    scales: Any
    scale_codes: Any
    scale_scales: Any
    scale_offset: Any
    kind: str
    value_shape: tuple[int, ...]
    block: int
    dtype: str

    @property
    def lead(self) -> tuple[int, ...]:
        return tuple(self.codes.shape[:-2])

    @property
    def shape(self) -> tuple[int, ...]:
        """The full weight shape ``[*lead, *value_shape]``."""
        return (*self.lead, *self.value_shape)

    def absmax(self):
        """Block absmax ``[*lead, blocks]`` float32 (reconstructed under double quantization)."""
        if self.scales is not None:
            return self.scales.astype(jnp.float32)
        blocks = self.codes.shape[-2]
        second = self.scale_codes.astype(jnp.float32) / 127.0 * self.scale_scales[..., None]
        flat = second.reshape(*second.shape[:-2], -1)[..., :blocks]
        return flat + self.scale_offset[..., None]

    def dequantize(self):
        lead, codes = self.lead, self.codes
        if self.kind == "nf4":
            idx = jnp.stack([codes >> 4, codes & 0xF], axis=-1).reshape(*codes.shape[:-1], self.block)
            values = jnp.asarray(NF4_CODES)[idx.astype(jnp.int32)]
        else:
            values = codes.astype(jnp.float32) / 127.0
        w = (values * self.absmax()[..., None]).reshape(*lead, -1)[..., : math.prod(self.value_shape)]
        return w.reshape(*lead, *self.value_shape).astype(self.dtype)

    # the structured-weight protocol of layers.linear
    def matmul(self, x):
        return layers.linear(x, self.dequantize())

    def astype(self, dtype):
        return dataclasses.replace(self, dtype=jnp.dtype(dtype).name)

    def reshape(self, *shape):
        """Reshape the weight part (the ``lead`` axes must stay in front); codes are untouched."""
        size = math.prod(self.shape)
        shape = layers.reshape_target(shape, size)
        lead = self.lead
        if math.prod(shape) != size or tuple(shape[: len(lead)]) != lead:
            raise ValueError(f"cannot reshape quantized weight {self.shape} to {shape}")
        return dataclasses.replace(self, value_shape=tuple(shape[len(lead):]))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def nbytes(self) -> int:
        arrays = (self.codes, self.scales, self.scale_codes, self.scale_scales, self.scale_offset)
        return sum(a.size * a.dtype.itemsize for a in arrays if a is not None)


def _blocks(x, lead_dims: int, block: int):
    """``[*lead, *rest]`` -> ``[*lead, blocks, block]`` float32, zero padded."""
    lead = x.shape[:lead_dims]
    flat = x.reshape(*lead, -1).astype(jnp.float32)
    pad = -flat.shape[-1] % block
    if pad:
        flat = jnp.pad(flat, [(0, 0)] * lead_dims + [(0, pad)])
    return flat.reshape(*lead, -1, block)


def _safe(absmax):
    return jnp.where(absmax == 0, 1.0, absmax)


def quantize(w, kind: str = "nf4", *, block: int = 64, double_quant: bool = False, lead_dims: int = 0,
             dtype=None) -> QuantizedWeight:
    """Block-wise absmax quantization of ``w`` (``lead_dims`` leading axes kept, e.g. 1 for layers).

    nf4: each value becomes the nearest NF4 level times its block's absmax; int8: ``round(127 x /
    absmax)``, an error of at most ``absmax / 254``. ``dtype`` is what dequantization yields
    (default: ``w``'s dtype). Jittable (all arguments but ``w`` static).
    """
    if kind not in KINDS:
        raise ValueError(f"quantization kind {kind!r} is not supported; use one of {KINDS}")
    if kind == "nf4" and block % 2:
        raise ValueError(f"nf4 packs two codes per byte: block must be even, got {block}")
    w = jnp.asarray(w)
    blocks = _blocks(w, lead_dims, block)
    absmax = jnp.max(jnp.abs(blocks), axis=-1)
    normed = blocks / _safe(absmax)[..., None]
    if kind == "nf4":
        idx = jnp.searchsorted(jnp.asarray(_NF4_MIDPOINTS), normed).astype(jnp.uint8)
        codes = (idx[..., 0::2] << 4) | idx[..., 1::2]
    else:
        codes = jnp.clip(jnp.round(normed * 127.0), -127, 127).astype(jnp.int8)
    fields = dict(scales=absmax, scale_codes=None, scale_scales=None, scale_offset=None)
    if double_quant:
        offset = jnp.mean(absmax, axis=-1)
        second = _blocks(absmax - offset[..., None], lead_dims, SCALE_BLOCK)
        amax2 = jnp.max(jnp.abs(second), axis=-1)
        scale_codes = jnp.clip(jnp.round(second / _safe(amax2)[..., None] * 127.0), -127, 127).astype(jnp.int8)
        fields = dict(scales=None, scale_codes=scale_codes, scale_scales=amax2, scale_offset=offset)
    return QuantizedWeight(
        codes=codes, **fields, kind=kind, value_shape=tuple(w.shape[lead_dims:]), block=block,
        dtype=jnp.dtype(dtype or w.dtype).name,
    )


def abstract_quantized(shape, kind: str = "nf4", *, block: int = 64, double_quant: bool = False,
                       lead_dims: int = 0, dtype="bfloat16") -> QuantizedWeight:
    """The ``QuantizedWeight`` of ``quantize`` with ``jax.ShapeDtypeStruct`` leaves (nothing allocated)."""
    spec = jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
    return jax.eval_shape(
        partial(quantize, kind=kind, block=block, double_quant=double_quant, lead_dims=lead_dims, dtype=dtype),
        spec,
    )


# ---------------------------------------------------------------------------
# Whole params trees

# The matrices of a block; norms, biases, embeddings and the output head stay in full precision.
DEFAULT_QUANT_TARGETS = r"layers/(wqkv|wo|w1|w2|w3)"


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def quantize_params(params, kind: str = "nf4", *, targets: str = DEFAULT_QUANT_TARGETS, block: int = 64,
                    double_quant: bool = False, dtype=None, abstract: bool = False, progress: bool = False):
    """``params`` with every leaf whose path (``layers/w1``) fully matches ``targets`` quantized.

    Stacked ``layers/*`` leaves keep their layer axis. ``abstract=True`` takes and returns
    ``ShapeDtypeStruct`` trees (for ahead-of-time memory analysis). Each leaf is quantized by one
    jitted program, so at most one full-precision leaf copy is live besides ``params``.
    """
    pattern = re.compile(targets)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    chosen = [i for i, (path, _) in enumerate(flat) if pattern.fullmatch(_path_str(path))]
    if not chosen:
        names = ", ".join(_path_str(p) for p, _ in flat)
        raise ValueError(f"quantization targets {targets!r} match no parameter; parameters are: {names}")
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(chosen), desc=f"quantizing to {kind}", unit="tensor")
    leaves = [leaf for _, leaf in flat]
    for i in chosen:
        path, leaf = flat[i]
        lead = 1 if _path_str(path).startswith("layers/") else 0
        if abstract:
            leaves[i] = abstract_quantized(leaf.shape, kind, block=block, double_quant=double_quant,
                                           lead_dims=lead, dtype=dtype or leaf.dtype)
        else:
            leaves[i] = _quantize_jit(leaf, kind, block, double_quant, lead, jnp.dtype(dtype or leaf.dtype).name)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return jax.tree_util.tree_unflatten(treedef, leaves)


@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _quantize_jit(w, kind, block, double_quant, lead_dims, dtype):
    return quantize(w, kind, block=block, double_quant=double_quant, lead_dims=lead_dims, dtype=dtype)


def is_quantized(x) -> bool:
    return isinstance(x, QuantizedWeight)


def dequantize_params(params):
    """Every ``QuantizedWeight`` in ``params`` replaced by its dequantized array."""
    return jax.tree.map(lambda x: x.dequantize() if is_quantized(x) else x, params, is_leaf=is_quantized)
