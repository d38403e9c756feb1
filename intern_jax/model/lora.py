"""Low-rank adapters (LoRA) on the model's weight leaves, chosen by regex over parameter paths.

A targeted leaf becomes a ``LoraWeight`` pytree (base array or ``QuantizedWeight``, ``a [in, r]``,
``b [r, *out]``, static ``scale = alpha / rank``) that ``layers.linear`` evaluates as
``x @ W + scale * (x @ a) @ b``; stacked ``layers/*`` leaves keep the layer axis on every part,
so ``lax.scan`` slices them per layer. Initialisation follows PEFT: ``a`` kaiming-uniform
(``U(-1/sqrt(in), 1/sqrt(in))``), ``b`` zero, so a fresh adapter leaves the model unchanged.
Adapters are a plain tree ``{"layers": {"wqkv": {"a", "b"}, ...}}`` -- that tree is what is
trained and checkpointed. Dropout on the adapter input is applied when a key is attached.
This module does not train, quantize (qlora.py) or write files (checkpoint/peft.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from intern_jax.config import check_fields
from intern_jax.model import layers

# Leaves an adapter can sit on, and how many axes (after ``layers``) are the matmul's input:
# ``wo [L, H, D, E]`` takes the flattened heads ``H * D``; every other matrix is ``[L, in, *out]``.
ADAPTABLE = {"layers/wqkv": 1, "layers/wo": 2, "layers/w1": 1, "layers/w2": 1, "layers/w3": 1}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank, alpha (output scaled by ``alpha / rank`` as PEFT does), dropout on the adapter input,
    and ``targets``: a regex that must fully match paths such as ``layers/wqkv``."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = r"layers/(wqkv|wo|w1|w2|w3)"

    def __post_init__(self):
        check_fields(self, "lora.")
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"lora targets {self.targets!r} is not a valid regex ({e})") from None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["base", "a", "b", "dropout_key"],
    meta_fields=["scale", "dropout"],
)
@dataclasses.dataclass(frozen=True)
class LoraWeight:
    """``base [*lead, *in, *out]`` plus ``scale * a [*lead, prod(in), r] @ b [*lead, r, *out]``.

    ``dropout_key`` (a key array with the same ``lead``, or None) switches on dropout of rate
    ``dropout`` on the adapter's input, as PEFT's ``lora_dropout``.
    """

    base: Any
    a: Any
    b: Any
    dropout_key: Any = None
    scale: float = 1.0
    dropout: float = 0.0

    @property
    def shape(self):
        return self.base.shape

    @property
    def ndim(self) -> int:
        return len(self.base.shape)

    # the structured-weight protocol of layers.linear
    def matmul(self, x):
        y = layers.linear(x, self.base)
        h = x
        if self.dropout_key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(self.dropout_key, 1.0 - self.dropout, x.shape)
            h = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
        low = layers.linear(layers.linear(h, self.a), self.b)
        return y + (self.scale * low).astype(y.dtype)

    def astype(self, dtype):
        return dataclasses.replace(self, base=self.base.astype(dtype), a=self.a.astype(dtype), b=self.b.astype(dtype))

    def reshape(self, *shape):
        """Reshape the base (the ``wo`` flattening in the model); ``a`` already takes the flat input."""
        return dataclasses.replace(self, base=self.base.reshape(*shape))


def is_lora(x) -> bool:
    return isinstance(x, LoraWeight)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def target_paths(params, lora: LoraConfig) -> list[str]:
    """Paths (``layers/wqkv``) of the leaves ``lora.targets`` selects; errors name the valid ones."""
    pattern = re.compile(lora.targets)
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=layers.is_structured_weight)
    paths = [_path_str(p) for p, _ in flat]
    chosen = [p for p in paths if pattern.fullmatch(p)]
    wrong = [p for p in chosen if p not in ADAPTABLE]
    if wrong:
        raise ValueError(
            f"lora targets {lora.targets!r} match {wrong}, which cannot carry adapters; "
            f"adaptable weights are {sorted(p for p in ADAPTABLE if p in paths)}"
        )
    if not chosen:
        raise ValueError(
            f"lora targets {lora.targets!r} match no parameter; adaptable weights are "
            f"{sorted(p for p in ADAPTABLE if p in paths)} (the regex must match the whole path)"
        )
    return chosen


def _get(tree, path: str):
    for k in path.split("/"):
        tree = tree[k]
    return tree


def adapter_shapes(params, lora: LoraConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """path -> (shape of a, shape of b) for each target of ``params`` (arrays, specs or quantized)."""
    out = {}
    for path in target_paths(params, lora):
        shape = tuple(_get(params, path).shape)
        n_in = ADAPTABLE[path]
        lead, w_in, w_out = shape[:1], shape[1 : 1 + n_in], shape[1 + n_in :]
        out[path] = ((*lead, math.prod(w_in), lora.rank), (*lead, lora.rank, *w_out))
    return out


def _nest(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, last = path.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return tree


def init_lora(params, lora: LoraConfig, key, dtype=jnp.float32) -> dict:
    """Fresh adapters ``{"layers": {name: {"a", "b"}}}``: ``a`` kaiming-uniform as PEFT, ``b`` zero."""
    shapes = adapter_shapes(params, lora)
    keys = jax.random.split(key, len(shapes))
    flat = {}
    for k, (path, (a_shape, b_shape)) in zip(keys, shapes.items(), strict=True):
        bound = 1.0 / math.sqrt(a_shape[-2])  # kaiming_uniform(a=sqrt(5)) on a [r, in] Linear
        flat[path] = {
            "a": jax.random.uniform(k, a_shape, jnp.float32, -bound, bound).astype(dtype),
            "b": jnp.zeros(b_shape, dtype),
        }
    return _nest(flat)


def abstract_lora(params, lora: LoraConfig, dtype=jnp.float32) -> dict:
    """The adapters tree of ``init_lora`` as ``jax.ShapeDtypeStruct`` leaves."""
    shapes = adapter_shapes(params, lora)
    return _nest({
        p: {"a": jax.ShapeDtypeStruct(a, jnp.dtype(dtype)), "b": jax.ShapeDtypeStruct(b, jnp.dtype(dtype))}
        for p, (a, b) in shapes.items()
    })


def _adapter_items(adapters) -> dict[str, dict]:
    flat = {}

    def walk(node, prefix):
        if set(node) == {"a", "b"}:
            flat[prefix] = node
            return
        for k, v in node.items():
            walk(v, f"{prefix}/{k}" if prefix else k)

    walk(adapters, "")
    return flat


def apply_lora(params, adapters, lora: LoraConfig, dropout_key=None) -> dict:
    """``params`` with each adapted leaf replaced by a ``LoraWeight`` (no copy of the base).

    With ``dropout_key`` and ``lora.dropout > 0``, every adapter gets its own dropout key
    (one per layer for stacked leaves).
    """
    items = _adapter_items(adapters)
    out = jax.tree.map(lambda x: x, params, is_leaf=layers.is_structured_weight)  # fresh containers
    keys = jax.random.split(dropout_key, len(items)) if dropout_key is not None and lora.dropout > 0 else None
    for i, (path, ab) in enumerate(items.items()):
        *parents, last = path.split("/")
        node = out
        for k in parents:
            if not isinstance(node, dict) or k not in node:
                raise ValueError(f"adapter {path!r} has no matching parameter in the model")
            node = node[k]
        base = node.get(last) if isinstance(node, dict) else None
        if base is None:
            raise ValueError(f"adapter {path!r} has no matching parameter in the model")
        key = None
        if keys is not None:
            lead = ab["a"].shape[:-2]
            key = jax.random.split(keys[i], lead) if lead else keys[i]
        node[last] = LoraWeight(base, ab["a"], ab["b"], key, scale=lora.scale, dropout=lora.dropout)
    return out


def merge_lora(params):
    """A plain params tree: each ``LoraWeight`` folded into its base (quantized bases dequantized).

    ``W + scale * a @ b`` is formed in float32 and cast to the base's dtype.
    """

    def merge(x):
        if not is_lora(x):
            return x.dequantize() if hasattr(x, "dequantize") else x
        base = x.base.dequantize() if hasattr(x.base, "dequantize") else x.base
        b = x.b.astype(jnp.float32).reshape(*x.b.shape[: x.a.ndim - 1], -1)  # [*lead, r, prod(out)]
        delta = jnp.einsum("...ir,...ro->...io", x.a.astype(jnp.float32), b)
        delta = delta.reshape(base.shape) * x.scale
        return (base.astype(jnp.float32) + delta).astype(base.dtype)

    return jax.tree.map(merge, params, is_leaf=layers.is_structured_weight)


def count_trainable(adapters) -> int:
    return sum(x.size for x in jax.tree.leaves(adapters))
