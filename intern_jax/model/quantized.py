"""Packed 4- and 8-bit weights for serving: the ``PackedWeight`` leaf and round-to-nearest quantization.

A projection ``[*lead, *in, *out]`` is held as integer codes grouped along its (flattened) input:
8-bit signed codes with one scale per group (symmetric), or 4-bit codes packed two per byte with a
scale and a float offset ("min") per group, ``w = q * scale + min`` (asymmetric min-max, AWQ's
grid; GGUF's Q4_0 / Q4_1 / Q8_0 blocks map onto it exactly). ``layers.linear`` multiplies it
through its ``matmul`` (``kernels.quantized_matmul``: the Pallas kernel on GPU, the XLA path on
CPU; on CPU a few rows (decode) go to the native GEMV of ``kernels.cpu`` when it is built), so
every projection and, optionally, the output head use it without the model knowing.
Stacked ``layers/*`` leaves keep their ``layers`` axis on every array. Choosing scales
(``awq.py``), files (``checkpoint/quantized.py``) and training (``qlora.py``) live elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from intern_jax.model import layers
from kernels import cpu as native_cpu
from kernels.quantized_matmul import dequantize as dequantize_codes
from kernels.quantized_matmul import pack_int4, quantized_matmul, quantized_matmul_xla

BITS = (4, 8)
DEFAULT_GROUP_SIZE = 128
# The projections of a block and how many of their axes (after ``layers``) are the product's input.
PROJECTIONS = {"wqkv": 1, "wo": 2, "w1": 1, "w3": 1, "w2": 1}


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["q", "scales", "mins"],
    meta_fields=["bits", "group_size", "in_shape", "out_shape", "dtype"],
)
@dataclasses.dataclass(frozen=True)
class PackedWeight:
    """A weight ``[*lead, *in_shape, *out_shape]`` as group-quantized codes over the flattened input ``I``.

    q: 8-bit ``[*lead, I, O]`` int8; 4-bit ``[*lead, I // 2, O]`` uint8 (input row ``2i`` in the low
    nibble, ``2i + 1`` in the high one). scales, mins: ``[*lead, I // group_size, O]`` float (mins
    None: symmetric). ``dtype`` is the compute dtype (``astype`` changes only that).
    """

    q: Any
    scales: Any
    mins: Any
    bits: int
    group_size: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def lead(self) -> tuple[int, ...]:
        return tuple(self.q.shape[:-2])

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.lead, *self.in_shape, *self.out_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def nbytes(self) -> int:
        return sum(a.size * jnp.dtype(a.dtype).itemsize for a in (self.q, self.scales, self.mins) if a is not None)

    def dequantize(self):
        """The float weight ``[*lead, *in_shape, *out_shape]`` in ``dtype``."""
        flat = lambda a: None if a is None else a.reshape(-1, *a.shape[-2:])  # noqa: E731
        one = partial(dequantize_codes, bits=self.bits, group_size=self.group_size, dtype=jnp.float32)
        mins = flat(self.mins)
        ws = [one(q, s, None, None if mins is None else mins[i]) for i, (q, s) in
              enumerate(zip(flat(self.q), flat(self.scales)))]
        return jnp.stack(ws).reshape(self.shape).astype(self.dtype)

    # the structured-weight protocol of layers.linear
    def matmul(self, x, out_dtype=None):
        """``x [..., I] @ w`` -> ``[..., *out_shape]`` in ``out_dtype`` (default x's), accumulated in f32."""
        if self.lead:
            raise ValueError(f"a packed weight with leading axes {self.lead} multiplies one layer at a time")
        args = dict(bits=self.bits, group_size=self.group_size, mins=self.mins)
        if jax.default_backend() == "gpu":
            y = quantized_matmul(x, self.q, self.scales, **args).astype(out_dtype or x.dtype)
        elif math.prod(x.shape[:-1]) <= native_cpu.MAX_ROWS and native_cpu.available():  # decode rows on CPU
            y = native_cpu.group_gemv(x, self.q, self.scales, out_dtype=out_dtype, **args)
        else:
            y = quantized_matmul_xla(x, self.q, self.scales, out_dtype=out_dtype, **args)
        return y.reshape(*x.shape[:-1], *self.out_shape)

    def astype(self, dtype):
        return dataclasses.replace(self, dtype=jnp.dtype(dtype).name)

    def reshape(self, *shape):
        """A new split of the same input and output (the model's ``wo`` flattening); codes untouched."""
        shape = layers.reshape_target(shape, math.prod(self.shape))
        lead, rest = shape[: len(self.lead)], shape[len(self.lead):]
        n_in = math.prod(self.in_shape)
        for k in range(1, len(rest)):
            if tuple(lead) == self.lead and math.prod(rest[:k]) == n_in and math.prod(rest[k:]) == math.prod(
                    self.out_shape):
                return dataclasses.replace(self, in_shape=tuple(rest[:k]), out_shape=tuple(rest[k:]))
        raise ValueError(f"cannot reshape packed weight {self.shape} (input {self.in_shape}) to {shape}")


def is_packed(x) -> bool:
    return isinstance(x, PackedWeight)


def check_quantization(bits: int, group_size: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be an even integer >= 2, got {group_size!r}")


def quantize(w, bits: int, group_size: int = DEFAULT_GROUP_SIZE, *, in_dims: int = 1, lead_dims: int = 0,
             scale_dtype="float32", name: str = "weight") -> PackedWeight:
    """Round-to-nearest ``w [*lead, *in, *out]`` (``in_dims`` input axes) into a ``PackedWeight``.

    8-bit: symmetric, ``scale = absmax / 127`` per group. 4-bit: asymmetric min-max per group,
    ``scale = (max - min) / 15`` and the min stored as the offset (both rounded to ``scale_dtype``
    first, so the codes are chosen against the values that will be used). Jittable.
    """
    check_quantization(bits, group_size)
    w = jnp.asarray(w)
    lead = tuple(w.shape[:lead_dims])
    in_shape = tuple(w.shape[lead_dims: lead_dims + in_dims])
    out_shape = tuple(w.shape[lead_dims + in_dims:])
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    if n_in % group_size:
        raise ValueError(f"group_size {group_size} does not divide the input dimension {n_in} of {name}; "
                         f"choose a group size that divides it (e.g. {_largest_group(n_in)})")
    g = w.reshape(*lead, n_in // group_size, group_size, n_out).astype(jnp.float32)
    sd = jnp.dtype(scale_dtype)
    if bits == 8:
        amax = jnp.max(jnp.abs(g), axis=-2)
        scales = jnp.where(amax == 0, 1.0, amax / 127.0).astype(sd)
        q = jnp.clip(jnp.round(g / scales.astype(jnp.float32)[..., None, :]), -127, 127).astype(jnp.int8)
        return PackedWeight(q.reshape(*lead, n_in, n_out), scales, None, 8, group_size, in_shape, out_shape,
                            jnp.dtype(w.dtype).name)
    lo, hi = jnp.min(g, axis=-2), jnp.max(g, axis=-2)
    scales = jnp.where(hi > lo, (hi - lo) / 15.0, 1.0).astype(sd)
    mins = lo.astype(sd)
    s, m = scales.astype(jnp.float32)[..., None, :], mins.astype(jnp.float32)[..., None, :]
    q = jnp.clip(jnp.round((g - m) / s), 0, 15).astype(jnp.uint8).reshape(-1, n_in, n_out)
    packed = jax.vmap(pack_int4)(q).reshape(*lead, n_in // 2, n_out)
    return PackedWeight(packed, scales, mins, 4, group_size, in_shape, out_shape, jnp.dtype(w.dtype).name)


def _largest_group(n: int) -> int:
    g = 128
    while g > 2 and n % g:
        g //= 2
    return g


def fake_quantize(w, bits: int, group_size: int):
    """``w [in, out]`` rounded as ``quantize`` would and dequantized (for searching scales)."""
    return quantize(w, bits, group_size).dequantize()


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def check_not_quantized(params, what: str = "the model") -> None:
    """A clear error when ``params`` already hold packed or QLoRA-quantized leaves."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: hasattr(x, "matmul"))
    for path, leaf in flat:
        if hasattr(leaf, "matmul"):
            raise ValueError(f"{what} is already quantized ({_path_str(path)} is a {type(leaf).__name__}); "
                             "quantize the full-precision checkpoint instead")


def check_params(params, cfg, bits: int, group_size: int, *, head: bool = False) -> None:
    """Every error ``quantize_params`` would raise, raised before any work: bits, group size, a model
    that is already quantized, a group size that does not divide some projection's input."""
    check_quantization(bits, group_size)
    check_not_quantized(params)
    dims = {f"layers/{k}": math.prod(params["layers"][k].shape[1: 1 + n]) for k, n in PROJECTIONS.items()}
    if head:
        dims["output"] = cfg.hidden_size
    bad = {k: n for k, n in dims.items() if n % group_size}
    if bad:
        fits = _largest_group(math.gcd(*dims.values()))
        raise ValueError(f"group_size {group_size} does not divide the input dimension of "
                         + ", ".join(f"{k} ({n})" for k, n in bad.items())
                         + f"; choose a group size that divides every projection's input (e.g. {fits})")


def quantize_params(params, cfg, bits: int, group_size: int = DEFAULT_GROUP_SIZE, *, head: bool = False,
                    scale_dtype="float32"):
    """``(params, cfg)`` with every block projection (and with ``head`` the output head) packed.

    A tied head becomes an untied ``output [E, V]`` packed copy (the embedding table stays whole
    for the lookup), so the returned config has ``tie_word_embeddings=False`` then. Norms,
    biases and the embedding stay in full precision.
    """
    check_params(params, cfg, bits, group_size, head=head)
    out = dict(params)
    run = jax.jit(quantize, static_argnames=("bits", "group_size", "in_dims", "lead_dims", "scale_dtype", "name"))
    out["layers"] = dict(params["layers"])
    for k, n in PROJECTIONS.items():
        out["layers"][k] = run(params["layers"][k], bits=bits, group_size=group_size, in_dims=n, lead_dims=1,
                               scale_dtype=scale_dtype, name=f"layers/{k}")
    if head:
        w = params["output"] if not cfg.tie_word_embeddings else jnp.transpose(params["tok_embeddings"])
        out["output"] = run(w, bits=bits, group_size=group_size, scale_dtype=scale_dtype, name="output")
        cfg = dataclasses.replace(cfg, tie_word_embeddings=False)
    return out, cfg


def param_bytes(params) -> int:
    """Bytes the parameters occupy (packed leaves count their codes, scales and offsets)."""
    total = 0
    for leaf in jax.tree.leaves(params, is_leaf=is_packed):
        total += leaf.nbytes() if is_packed(leaf) else leaf.size * jnp.dtype(leaf.dtype).itemsize
    return total
