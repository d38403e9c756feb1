"""A causal self-attention kernel run per device of a mesh, for a sequence split over devices.

GSPMD cannot split a kernel call (a Pallas kernel is opaque to it), so ``attention_per_device``
runs the kernel under ``shard_map`` on each device's rows and heads, over the abstract mesh the
caller traces with. The XLA attention path needs none of this: GSPMD splits it by itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from intern_jax import sharding as shd


def attention_per_device(kernel, q, k, v, q_segment_ids, kv_segment_ids):
    """``kernel(q, k, v, segment_ids=..., [kv_segment_ids=...], causal=True)`` per device.

    q: ``[batch, seq, heads, head_dim]`` split over ``batch`` and ``seq`` (and heads as the kv heads
    are); k, v: ``[batch, seq, kv_heads, head_dim]`` whole along the sequence (gathered by the caller's
    layout). With the sequence split, a device holds ``L`` queries at global positions ``r*L ...``
    and the whole sequence of keys ``T``. The kernel aligns the queries with the *end* of the keys,
    so the keys are rotated by ``T - (r+1)*L``: key ``r*L + i`` lands at index ``T - L + i``, where
    the kernel's causal mask puts query ``i``, and the later keys that wrap around to the front get
    segment 0, which nothing sees. (Every device then walks as many key blocks as the last one; the
    masked ones do no harm.)
    """
    mesh = jax.sharding.get_abstract_mesh()

    def spec(x, axes):
        return shd.fit_spec(shd.logical_to_spec(axes), x.shape, mesh)

    kv_spec = spec(k, ("batch", None, "kv_heads", None))
    q_spec = spec(q, ("batch", "seq", "heads", None))
    # the kernel pairs query head h with kv head h // G, which holds per device only if both split alike
    q_spec = PartitionSpec(q_spec[0], q_spec[1], kv_spec[2], None)
    seg_q, seg_kv = PartitionSpec(*q_spec[:2]), PartitionSpec(kv_spec[0], None)
    seq_axes = q_spec[1]

    def local(q, k, v, q_seg, kv_seg):
        if seq_axes is None:  # whole rows on every device
            return kernel(q, k, v, segment_ids=q_seg, causal=True)
        t, length = k.shape[1], q.shape[1]
        names = (seq_axes,) if isinstance(seq_axes, str) else tuple(seq_axes)
        shift = t - (jax.lax.axis_index(names) + 1) * length
        k, v, kv_seg = (jnp.roll(a, shift, axis=1) for a in (k, v, kv_seg))
        kv_seg = jnp.where(jnp.arange(t)[None, :] < shift, 0, kv_seg)
        return kernel(q, k, v, segment_ids=q_seg, kv_segment_ids=kv_seg, causal=True)

    return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_q, seg_kv), out_specs=q_spec,
                         check_vma=False)(q, k, v, q_segment_ids, kv_segment_ids)
