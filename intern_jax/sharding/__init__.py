"""Device mesh and logical-axis rules: how named array axes map onto mesh axes.

Model code names logical axes (``embed``, ``heads``, ``mlp`` ...); this module turns
them into ``PartitionSpec``s for a mesh with axes ``("data", "fsdp", "sequence", "tensor")``.
Changing parallelism means changing the mesh shape or the rules, never model code.

The rules are a value: a run's config carries them (``ParallelConfig.rules``, default
``DEFAULT_RULES``) and the code that traces the model binds them with ``use_rules`` beside the
abstract mesh (the train step does both), so ``constrain`` / ``is_split`` in model code read the
run's rules without a parameter threaded through the layers. ``context_parallel`` runs a kernel per
device of a mesh (``shard_map``) for attention over a split sequence.

The axes are ordered outermost first: neighbouring devices (one host, one NVLink domain) share
the inner axes, so ``tensor`` (a collective in every matmul) and ``sequence`` (the keys and
values of every layer) get the fastest links.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import types
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "sequence", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None for replicated); every logical axis
# that model code names is listed, so a rules table naming any other is a typo
DEFAULT_RULES: Mapping[str, str | tuple[str, ...] | None] = types.MappingProxyType({
    "batch": ("data", "fsdp"),
    "seq": "sequence",
    "vocab": "tensor",
    # the sequence devices hold the same weights, so ZeRO shards state over them too
    "embed": ("fsdp", "sequence"),
    "heads": "tensor",
    "kv_heads": "tensor",
    "qkv": None,
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
})

_ACTIVE_RULES: contextvars.ContextVar[Mapping | None] = contextvars.ContextVar("logical_axis_rules", default=None)


def check_rules(rules: Mapping) -> None:
    """A ValueError naming the entry when ``rules`` names an unknown logical axis or mesh axis."""
    for name, target in rules.items():
        if name not in DEFAULT_RULES:
            raise ValueError(f"sharding rule for unknown logical axis {name!r}; logical axes: "
                             f"{', '.join(DEFAULT_RULES)}")
        targets = () if target is None else (target,) if isinstance(target, str) else target
        if not isinstance(targets, (tuple, list)) or any(t not in MESH_AXES for t in targets):
            raise ValueError(f"sharding rule {name!r} -> {target!r}: use None, a mesh axis or a tuple of them "
                             f"(mesh axes: {', '.join(MESH_AXES)})")


@contextlib.contextmanager
def use_rules(rules: Mapping | None):
    """Bind ``rules`` (None: ``DEFAULT_RULES``) for ``constrain``, ``is_split`` and ``logical_to_spec``
    called without rules inside the block (what the model reads while a caller traces it)."""
    token = _ACTIVE_RULES.set(rules)
    try:
        yield
    finally:
        _ACTIVE_RULES.reset(token)


def current_rules() -> Mapping:
    """The rules bound by ``use_rules``, else ``DEFAULT_RULES``."""
    rules = _ACTIVE_RULES.get()
    return DEFAULT_RULES if rules is None else rules


def without_mesh_axes(rules: Mapping, axes: Sequence[str]) -> dict:
    """``rules`` with the mesh ``axes`` taken out of every entry (what those axes split is replicated)."""
    out = {}
    for name, target in rules.items():
        targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        kept = tuple(t for t in targets if t not in axes)
        out[name] = None if not kept else kept[0] if len(kept) == 1 else kept
    return out


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence | None = None) -> Mesh:
    """A mesh over ``devices`` (default: all) with axes data/fsdp/sequence/tensor.

    ``shape`` may leave one axis as -1 to take the remaining devices; missing axes are 1.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {"fsdp": -1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid axes: {MESH_AXES}")
    sizes = [shape.get(a, 1) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split by fixed mesh axes {shape}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}"
        )
    return Mesh(
        np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES)
    )


def logical_to_spec(axes: Sequence[str | None], rules: Mapping | None = None) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry these logical names (or, for a dimension
    that merges several, a tuple of names, outer first).

    A mesh axis is used at most once per array: a later dimension that maps to an
    already-used mesh axis stays replicated.
    """
    rules = current_rules() if rules is None else rules
    used: set[str] = set()
    out = []
    for name in axes:
        names = () if name is None else (name,) if isinstance(name, str) else tuple(name)
        targets = []
        for n in names:  # a tuple of names: merged dimensions, outer first
            target = rules.get(n)
            targets += [] if target is None else [target] if isinstance(target, str) else list(target)
        if not targets:
            out.append(None)
            continue
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        out.append(targets[0] if len(targets) == 1 else (targets or None))
    return PartitionSpec(*out)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide (small or odd-sized dims)."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if entry is None:
            out.append(None)
            continue
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        kept = []
        for n in names:
            size = math.prod(mesh.shape[k] for k in kept + [n])
            if dim % size == 0:
                kept.append(n)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def named_sharding(mesh: Mesh, axes, shape, rules=None) -> NamedSharding:
    return NamedSharding(mesh, fit_spec(logical_to_spec(axes, rules), shape, mesh))


def constrain(x, axes, rules=None):
    """``with_sharding_constraint`` of ``x`` by logical axis names, under the abstract mesh that the
    caller is tracing with (``jax.sharding.use_abstract_mesh``; the train step sets it). Outside
    one, ``x`` is returned as is, so model code that calls this runs anywhere."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, fit_spec(logical_to_spec(axes, rules), x.shape, mesh))


def is_split(name: str, rules=None) -> bool:
    """Whether logical axis ``name`` is split over more than one device under the abstract mesh
    being traced with (False outside one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    target = (current_rules() if rules is None else rules).get(name)
    targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    return math.prod(mesh.shape.get(t, 1) for t in targets) > 1
