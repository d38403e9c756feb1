"""The KV cache: its two layouts and the per-layer "write the new keys and values, then attend" step.

This module owns the cache layout; the model's cached branch calls only ``begin`` (once per
forward) and ``write_and_attend`` (once per layer), and knows nothing else of it.

- ``DenseKV``: one contiguous row of ``capacity`` slots per sequence, ``k``/``v`` stored
  ``[layers, batch, capacity, kv_heads, head_dim]``. For offline batches and single chats:
  attention reads a layer's slice in place, with no gather.
- ``PagedKV``: a pool of fixed-size pages shared by all sequences, ``k``/``v`` stored
  ``[layers, kv_heads, num_pages, page_size, head_dim]`` (the layout of
  ``kernels.paged_attention``), addressed per sequence by ``block_tables [batch, pages_per_seq]``.
  For the serving engine: sequences of any length share one pool, and pages move between
  them without copying. Which page a sequence owns is the caller's business (the block pool).

Both keep token ``j`` of a sequence at logical slot ``j``; ``lengths [batch]`` counts the
tokens written. New tokens go to slots ``lengths .. lengths + T - 1`` (right padding, segment
0, is never written), and a query at slot ``s`` sees the keys at slots ``<= s``. Keys and
values may be stored as int8 with one float32 scale per token and head
(``kernels.quantize_kv_int8``): half the bytes of bf16, a quarter of f32. Unquantized, they are
stored in ``dtype``: the model's compute dtype, which by default is the params' (``param_dtype``).

Attention over the cache: XLA over the layer's keys (dense: in place; paged: pages gathered
into rows) everywhere; on GPU, paged attention runs ``kernels.paged_prefill_attention``, the
Pallas kernel, which reads the pages itself. This module neither allocates pages nor
schedules sequences.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from intern_jax.config import ModelConfig
from intern_jax.model import layers
from kernels.paged_attention import dequantize_kv_int8, paged_prefill_attention, quantize_kv_int8


class Step(NamedTuple):
    """Where one forward's new tokens go: computed once, shared by every layer.

    ``slots [B, T]``: each new token's slot (its position in the sequence); ``valid [B, T]``:
    real tokens (not right padding); ``lengths [B]``: tokens in the cache after this forward;
    ``new_tokens [B]``: real new tokens per row.
    """

    slots: jax.Array
    valid: jax.Array
    lengths: jax.Array
    new_tokens: jax.Array


def begin(cache, segment_ids) -> Step:
    """The ``Step`` for appending a ``[B, T]`` chunk (``segment_ids`` 0 = padding) to ``cache``."""
    t = segment_ids.shape[1]
    slots = cache.lengths[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    valid = segment_ids != 0
    new_tokens = jnp.sum(valid, axis=1, dtype=jnp.int32)
    return Step(slots, valid, cache.lengths + new_tokens, new_tokens)


def _store(x, int8: bool):
    """New keys or values ``[..., D]`` as stored: ``(values, scales or None)``."""
    if int8:
        return quantize_kv_int8(x)
    return x, None


def _load(values, scales, dtype):
    return values.astype(dtype) if scales is None else dequantize_kv_int8(values, scales, dtype)


def _attend_rows(q, k, v, step: Step):
    """XLA attention of queries ``[B, T, H, D]`` over keys/values ``[B, S, K, D]`` held by slot."""
    kv_slots = jnp.arange(k.shape[1], dtype=jnp.int32)
    mask = (kv_slots[None, None, :] <= step.slots[:, :, None]) & step.valid[:, :, None]
    return layers.attention_xla(q, k, v, mask)


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def _empty(shape, dtype, int8: bool):
    """Zeroed keys and values ``(k, v, k_scales, v_scales)``: int8 with unit scales ``shape[:-1]``, or ``dtype``."""
    store = jnp.int8 if int8 else jnp.dtype(dtype)
    scales = (lambda: jnp.ones(shape[:-1], jnp.float32)) if int8 else (lambda: None)
    return jnp.zeros(shape, store), jnp.zeros(shape, store), scales(), scales()


class _Common:
    """What both layouts share: rows counted by ``lengths``, int8 when scales are stored."""

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def int8(self) -> bool:
        return self.k_scales is not None

    def with_lengths(self, lengths):
        """The same cache with ``lengths [B]`` replaced: a shorter length forgets the later tokens."""
        return dataclasses.replace(self, lengths=jnp.asarray(lengths, jnp.int32))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseKV(_Common):
    """Keys and values ``[L, B, capacity, K, D]`` (int8 with scales ``[L, B, capacity, K]``), ``lengths [B]``."""

    k: jax.Array
    v: jax.Array
    k_scales: jax.Array | None
    v_scales: jax.Array | None
    lengths: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch_size: int, capacity: int, *, dtype=None, int8: bool = False) -> DenseKV:
        shape = (cfg.num_layers, batch_size, capacity, cfg.num_kv_heads, cfg.head_dim)
        return cls(*_empty(shape, dtype or cfg.param_dtype, int8), jnp.zeros((batch_size,), jnp.int32))

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def rows(self, index) -> DenseKV:
        """The rows ``index [n]`` as a cache of their own (a copy; out-of-range indices read the last row)."""
        take = lambda x: None if x is None else jnp.take(x, index, axis=1, mode="clip")  # noqa: E731
        return DenseKV(take(self.k), take(self.v), take(self.k_scales), take(self.v_scales),
                       jnp.take(self.lengths, index, mode="clip"))

    def set_rows(self, index, part: DenseKV) -> DenseKV:
        """This cache with rows ``index [n]`` replaced by ``part``'s (out-of-range indices are dropped)."""
        put = lambda x, y: None if x is None else x.at[:, index].set(y, mode="drop")  # noqa: E731
        return DenseKV(put(self.k, part.k), put(self.v, part.v), put(self.k_scales, part.k_scales),
                       put(self.v_scales, part.v_scales), self.lengths.at[index].set(part.lengths, mode="drop"))

    def grown(self, capacity: int) -> DenseKV:
        """The same contents with room for ``capacity`` tokens per row (never shrinks)."""
        pad = capacity - self.capacity
        if pad <= 0:
            return self

        def widen(x):
            return None if x is None else jnp.pad(x, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 3))

        return DenseKV(widen(self.k), widen(self.v), widen(self.k_scales), widen(self.v_scales), self.lengths)

    def write_and_attend(self, layer, step: Step, q, k, v, impl: str = "xla"):
        """Write layer ``layer``'s new ``k``, ``v`` ``[B, T, K, D]`` at ``step.slots``, then attend.

        Returns ``(attention [B, T, H, D], cache)``. ``impl`` is accepted for symmetry: dense
        attention is XLA everywhere. Slots past the capacity are dropped.
        """
        b = q.shape[0]
        rows = jnp.arange(b)[:, None]
        slots = jnp.where(step.valid, step.slots, self.capacity)  # padding: out of range, dropped
        arrays = {}
        for name, new in (("k", k), ("v", v)):
            values, scales = _store(new, self.int8)
            arrays[name] = getattr(self, name).at[layer, rows, slots].set(values.astype(self.k.dtype), mode="drop")
            if scales is not None:
                arrays[f"{name}_scales"] = getattr(self, f"{name}_scales").at[layer, rows, slots].set(
                    scales, mode="drop")
        cache = dataclasses.replace(self, **arrays)
        keys = _load(cache.k[layer], None if cache.k_scales is None else cache.k_scales[layer], q.dtype)
        values = _load(cache.v[layer], None if cache.v_scales is None else cache.v_scales[layer], q.dtype)
        return _attend_rows(q, keys, values, step), cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PagedKV(_Common):
    """Pages ``[L, K, num_pages, page_size, D]`` (int8 with scales ``[L, K, num_pages, page_size]``),
    ``block_tables [B, pages_per_seq]`` (page ids; entries past a sequence's pages may hold anything)
    and ``lengths [B]``."""

    k: jax.Array
    v: jax.Array
    k_scales: jax.Array | None
    v_scales: jax.Array | None
    block_tables: jax.Array
    lengths: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, num_pages: int, page_size: int, batch_size: int, pages_per_seq: int, *,
             dtype=None, int8: bool = False) -> PagedKV:
        shape = (cfg.num_layers, cfg.num_kv_heads, num_pages, page_size, cfg.head_dim)
        return cls(*_empty(shape, dtype or cfg.param_dtype, int8), jnp.zeros((batch_size, pages_per_seq), jnp.int32),
                   jnp.zeros((batch_size,), jnp.int32))

    @staticmethod
    def bytes_per_page(cfg: ModelConfig, page_size: int, *, dtype=None, int8: bool = False) -> int:
        """Device bytes of one page over all layers, keys and values (scales included)."""
        per_token = cfg.num_layers * cfg.num_kv_heads * 2
        if int8:
            return page_size * per_token * (cfg.head_dim + 4)
        return page_size * per_token * cfg.head_dim * jnp.dtype(dtype or cfg.param_dtype).itemsize

    @property
    def page_size(self) -> int:
        return self.k.shape[3]

    @property
    def num_pages(self) -> int:
        return self.k.shape[2]

    @property
    def capacity(self) -> int:
        """Slots one sequence can address: ``pages_per_seq * page_size``."""
        return self.block_tables.shape[1] * self.page_size

    def with_block_tables(self, block_tables) -> PagedKV:
        return dataclasses.replace(self, block_tables=jnp.asarray(block_tables, jnp.int32))

    def rows(self, index) -> PagedKV:
        """The sequences ``index [n]`` as a cache of their own: the same pages, their block tables and lengths."""
        return dataclasses.replace(self, block_tables=jnp.take(self.block_tables, index, axis=0, mode="clip"),
                                   lengths=jnp.take(self.lengths, index, mode="clip"))

    def set_rows(self, index, part: PagedKV) -> PagedKV:
        """``part``'s pages, with sequences ``index [n]`` taking ``part``'s tables and lengths."""
        return dataclasses.replace(part, block_tables=self.block_tables.at[index].set(part.block_tables, mode="drop"),
                                   lengths=self.lengths.at[index].set(part.lengths, mode="drop"))

    def _gather(self, pages, layer):
        """One layer's pages ``[K, P, page, ...]`` as rows ``[B, capacity, K, ...]``."""
        g = pages[layer][:, self.block_tables]  # [K, B, pages_per_seq, page, ...]
        kvh, b, pps, page = g.shape[:4]
        return jnp.moveaxis(g.reshape(kvh, b, pps * page, *g.shape[4:]), 0, 2)

    def write_and_attend(self, layer, step: Step, q, k, v, impl: str = "xla"):
        """Write layer ``layer``'s new ``k``, ``v`` ``[B, T, K, D]`` into the sequences' pages, then attend.

        Returns ``(attention [B, T, H, D], cache)``. Padding tokens and slots past a sequence's
        block table are not written. ``impl`` "pallas" (or "auto" on GPU) reads the pages with
        the Pallas kernel; otherwise the pages are gathered into rows for XLA attention.
        """
        page = self.page_size
        in_table = step.valid & (step.slots < self.capacity)
        index = jnp.minimum(step.slots // page, self.block_tables.shape[1] - 1)
        pages = jnp.take_along_axis(self.block_tables, index, axis=1)
        pages = jnp.where(in_table, pages, self.num_pages)  # out of range: dropped
        offsets = step.slots % page
        arrays = {}
        for name, new in (("k", k), ("v", v)):
            # the indices (layer, pages, offsets) are split by the kv-head slice, so the updated
            # elements are laid out [B, T, K, ...]: the new values' own layout
            values, scales = _store(new, self.int8)
            arrays[name] = getattr(self, name).at[layer, :, pages, offsets].set(
                values.astype(self.k.dtype), mode="drop")
            if scales is not None:
                arrays[f"{name}_scales"] = getattr(self, f"{name}_scales").at[layer, :, pages, offsets].set(
                    scales, mode="drop")
        cache = dataclasses.replace(self, **arrays)
        scales = (None, None) if not self.int8 else (cache.k_scales[layer], cache.v_scales[layer])
        if impl == "pallas" or (impl == "auto" and _on_gpu()):
            out = paged_prefill_attention(
                q, cache.k[layer], cache.v[layer], self.block_tables, step.lengths, q_lengths=step.new_tokens,
                k_scales=scales[0], v_scales=scales[1],
            )
            return out, cache
        keys = _load(cache._gather(cache.k, layer), None if scales[0] is None else cache._gather(cache.k_scales, layer),
                     q.dtype)
        values = _load(cache._gather(cache.v, layer),
                       None if scales[1] is None else cache._gather(cache.v_scales, layer), q.dtype)
        return _attend_rows(q, keys, values, step), cache


def finish(cache, step: Step):
    """The cache after a forward: every layer written, ``lengths`` advanced."""
    return cache.with_lengths(step.lengths)
