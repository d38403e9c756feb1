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
Pallas kernel, which reads the pages itself; on CPU, a paged cache made with ``native=True``
(float32 pages, see ``native_attention_usable``) runs ``kernels.cpu.paged_attention``, a native
kernel that also reads the pages in place (XLA:CPU's gather copies them element by element, which
costs a decode batch more than its attention).

``PackedKV`` is a view for ragged prefill: several sequences' new tokens packed into one stream,
so the model's matmuls run on real tokens rather than on each prompt padded to the longest.
This module neither allocates pages nor schedules sequences.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from intern_jax.config import ModelConfig
from intern_jax.model import layers
from kernels import cpu as native_kernels
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
    if isinstance(cache, PackedKV):
        return cache.begin(segment_ids)
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


def _attend_rows(q, k, v, step: Step, kv_heads_first: bool = False):
    """XLA attention of queries ``[B, T, H, D]`` over keys/values ``[B, S, K, D]`` held by slot
    (``kv_heads_first``: ``[K, B, S, D]``)."""
    kv_slots = jnp.arange(k.shape[2 if kv_heads_first else 1], dtype=jnp.int32)
    mask = (kv_slots[None, None, :] <= step.slots[:, :, None]) & step.valid[:, :, None]
    return layers.attention_xla(q, k, v, mask, kv_heads_first=kv_heads_first)


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
    native: bool = dataclasses.field(default=False, metadata={"static": True})

    @classmethod
    def init(cls, cfg: ModelConfig, num_pages: int, page_size: int, batch_size: int, pages_per_seq: int, *,
             dtype=None, int8: bool = False, native: bool = False) -> PagedKV:
        """``native``: attend with ``kernels.cpu.paged_attention`` (float32 pages on one CPU device, where
        ``native_attention_usable`` says so) instead of gathering the pages for XLA."""
        shape = (cfg.num_layers, cfg.num_kv_heads, num_pages, page_size, cfg.head_dim)
        return cls(*_empty(shape, dtype or cfg.param_dtype, int8), jnp.zeros((batch_size, pages_per_seq), jnp.int32),
                   jnp.zeros((batch_size,), jnp.int32), native)

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
        """One layer's pages ``[K, P, page, ...]`` as rows ``[K, B, capacity, ...]`` (one copy, no transpose)."""
        g = pages[layer][:, self.block_tables]  # [K, B, pages_per_seq, page, ...]
        kvh, b, pps, page = g.shape[:4]
        return g.reshape(kvh, b, pps * page, *g.shape[4:])

    def write_and_attend(self, layer, step: Step, q, k, v, impl: str = "xla"):
        """Write layer ``layer``'s new ``k``, ``v`` ``[B, T, K, D]`` into the sequences' pages, then attend.

        Returns ``(attention [B, T, H, D], cache)``. Padding tokens and slots past a sequence's
        block table are not written. ``impl`` "pallas" (or "auto" on GPU) reads the pages with
        the Pallas kernel; otherwise the pages are gathered into rows for XLA attention.
        """
        cache = self._write(layer, self.block_tables, step.slots, step.valid, k, v)
        return cache._attend(layer, q, step, impl), cache

    def _native(self, impl: str) -> bool:
        return self.native and impl != "pallas" and not (impl == "auto" and _on_gpu())

    def _attend_native(self, layer, q, rows, slots):
        """Flat queries ``[N, H, D]`` of sequences ``rows [N]`` at ``slots [N]`` (-1: none) over layer
        ``layer``'s pages, read in place by the native kernel."""
        return native_kernels.paged_attention(q, self.k, self.v, self.block_tables, rows, slots, layer=layer)

    def _write(self, layer, tables, slots, valid, k, v):
        """This cache with new keys and values ``[B, T, K, D]`` written at ``slots [B, T]`` of the
        sequences whose block tables are ``tables [B, pages_per_seq]`` (where ``valid``)."""
        page = self.page_size
        in_table = valid & (slots < tables.shape[1] * page)
        index = jnp.minimum(slots // page, tables.shape[1] - 1)
        pages = jnp.take_along_axis(tables, index, axis=1)
        pages = jnp.where(in_table, pages, self.num_pages)  # out of range: dropped
        offsets = slots % page
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
        return dataclasses.replace(self, **arrays)

    def _attend(self, layer, q, step: Step, impl: str):
        """Queries ``[B, T, H, D]`` at ``step.slots`` over layer ``layer``'s pages (already written)."""
        scales = (None, None) if not self.int8 else (self.k_scales[layer], self.v_scales[layer])
        if self._native(impl):
            b, t = q.shape[:2]
            rows = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, t))
            out = self._attend_native(layer, q.reshape(b * t, *q.shape[2:]), rows.reshape(-1),
                                      jnp.where(step.valid, step.slots, -1).reshape(-1))
            return out.reshape(q.shape).astype(q.dtype)
        if impl == "pallas" or (impl == "auto" and _on_gpu()):
            return paged_prefill_attention(
                q, self.k[layer], self.v[layer], self.block_tables, step.lengths, q_lengths=step.new_tokens,
                k_scales=scales[0], v_scales=scales[1],
            )
        keys = _load(self._gather(self.k, layer), None if scales[0] is None else self._gather(self.k_scales, layer),
                     q.dtype)
        values = _load(self._gather(self.v, layer),
                       None if scales[1] is None else self._gather(self.v_scales, layer), q.dtype)
        return _attend_rows(q, keys, values, step, kv_heads_first=True)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedKV:
    """Several sequences of a ``PagedKV`` extended by one packed stream of new tokens (ragged prefill).

    The model runs on the stream as one row ``[1, N]``: its matmuls see only real tokens (plus the
    stream's padding to a bucket), not each sequence padded to the longest. ``cache``: the sequences'
    own view (block tables ``[R, pages]``, ``lengths [R]`` cached before the stream);
    ``token_row [N]``: each token's sequence (``R``: padding); ``token_slot [N]``: its slot in that
    sequence; ``first [R]`` / ``count [R]``: where each sequence's tokens start in the stream and how
    many there are. The native kernel attends over the stream as it is; the XLA path regroups the
    queries into ``[R, width]`` (``width``: at least the longest sequence's count), attends as
    ``PagedKV`` does, and scatters the results back.
    """

    cache: PagedKV
    token_row: jax.Array
    token_slot: jax.Array
    first: jax.Array
    count: jax.Array
    width: int = dataclasses.field(default=0, metadata={"static": True})

    @property
    def lengths(self):
        return self.cache.lengths

    def last(self):
        """The stream index of each sequence's last new token ``[R]``."""
        return self.first + jnp.maximum(self.count - 1, 0)

    def begin(self, segment_ids) -> Step:
        """The stream's ``Step``: ``slots``/``valid`` ``[1, N]``; ``lengths``/``new_tokens`` per sequence ``[R]``."""
        return Step(self.token_slot[None, :], segment_ids != 0, self.cache.lengths + self.count, self.count)

    def write_and_attend(self, layer, step: Step, q, k, v, impl: str = "xla"):
        """``PagedKV.write_and_attend`` for the stream: ``q``, ``k``, ``v`` ``[1, N, ...]``."""
        inner = self.cache
        tables = jnp.take(inner.block_tables, self.token_row, axis=0, mode="clip")  # [N, pages]
        written = inner._write(layer, tables, self.token_slot[:, None], step.valid[0][:, None],
                               k[0][:, None], v[0][:, None])
        cache = dataclasses.replace(self, cache=written)
        if written._native(impl):  # the kernel takes the stream as it is
            attn = written._attend_native(layer, q[0], self.token_row, jnp.where(step.valid[0], self.token_slot, -1))
            return attn.astype(q.dtype)[None], cache
        if self.width < 1:
            raise ValueError("PackedKV: the XLA attention path needs width >= the longest sequence's new tokens")
        n = self.token_row.shape[0]
        offsets = jnp.arange(self.width, dtype=jnp.int32)[None, :]
        layout = jnp.where(offsets < self.count[:, None], self.first[:, None] + offsets, n)  # [R, width]
        rows = jnp.take(q[0], layout, axis=0, mode="clip")  # [R, width, H, D]
        by_row = Step(jnp.take(self.token_slot, layout, mode="clip"), layout < n, step.lengths, step.new_tokens)
        attn = written._attend(layer, rows, by_row, impl)
        out = jnp.zeros(q.shape[1:], attn.dtype).at[layout].set(attn, mode="drop")
        return out[None], cache

    def with_lengths(self, lengths):
        return dataclasses.replace(self, cache=self.cache.with_lengths(lengths))


def native_attention_usable(dtype, *, int8: bool = False, devices: int = 1) -> bool:
    """Whether ``PagedKV(native=True)`` can attend here: float32 unquantized pages, on one CPU device, with
    the native kernels built (``kernels.cpu.available()``; ``INTERN_JAX_NATIVE=0`` turns them off)."""
    return (jax.default_backend() == "cpu" and devices == 1 and not int8
            and jnp.dtype(dtype) == jnp.float32 and native_kernels.available())


def finish(cache, step: Step):
    """The cache after a forward: every layer written, ``lengths`` advanced."""
    return cache.with_lengths(step.lengths)
