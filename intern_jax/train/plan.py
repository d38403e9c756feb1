"""Plan before you pay: compile a run's train step for a mesh ahead of time and read its memory.

``plan_memory(train_cfg, mesh)`` lowers the jitted step on abstract inputs (ShapeDtypeStructs
carrying their shardings; no weights are allocated), compiles it and reports per-device bytes:
params and optimizer state from their shard shapes, and what XLA's ``memory_analysis()`` says
the program needs for arguments, outputs and temporaries (activations, gradients, collectives
buffers). It runs on fake CPU devices; it does not predict speed.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from intern_jax.model import internlm2
from intern_jax.train.config import TrainConfig
from intern_jax.train.metrics import flops_per_token
from intern_jax.train.step import make_train_step

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    mesh: dict
    num_params: int
    params_bytes: int  # per device
    opt_state_bytes: int  # per device
    argument_bytes: int  # per device, from the compiled program (state + batch)
    output_bytes: int
    alias_bytes: int  # outputs that reuse donated arguments
    temp_bytes: int  # activations, gradients and other temporaries
    flops_per_step: float  # model FLOPs (metrics.flops_per_token) of one global batch

    @property
    def peak_bytes(self) -> int:
        """Arguments + temporaries + outputs not written in place of donated arguments."""
        return self.argument_bytes + self.temp_bytes + max(self.output_bytes - self.alias_bytes, 0)

    def table(self, device_memory_gib: float | None = None) -> str:
        rows = [
            ("mesh", " x ".join(f"{k}={v}" for k, v in self.mesh.items())),
            ("parameters", f"{self.num_params / 1e9:.3f} B"),
            ("params / device", _gib(self.params_bytes)),
            ("optimizer state / device", _gib(self.opt_state_bytes)),
            ("arguments / device (compiled)", _gib(self.argument_bytes)),
            ("activations + temporaries / device", _gib(self.temp_bytes)),
            ("outputs not aliased / device", _gib(max(self.output_bytes - self.alias_bytes, 0))),
            ("peak / device", _gib(self.peak_bytes)),
            ("model TFLOPs per step", f"{self.flops_per_step / 1e12:.1f}"),
        ]
        if device_memory_gib:
            verdict = "fits" if self.peak_bytes <= device_memory_gib * GIB else "does NOT fit"
            rows.append((f"on {device_memory_gib:g} GiB devices", verdict))
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def per_device_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(abstract_tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def plan_memory(train_cfg: TrainConfig, mesh, compiler_options: dict | None = None) -> MemoryPlan:
    """Compile the train step for ``mesh`` on abstract inputs and report per-device memory."""
    model_cfg = train_cfg.model_config
    ts = make_train_step(model_cfg, train_cfg, mesh, compiler_options=compiler_options)
    state = ts.abstract_state()
    batch = ts.abstract_batch(train_cfg.batch_size, train_cfg.seq_len)
    compiled = ts.step.lower(state, None, batch).compile()
    mem = compiled.memory_analysis()
    if mem is None:
        raise RuntimeError("this backend's compiled programs report no memory analysis")
    return MemoryPlan(
        mesh=dict(mesh.shape),
        num_params=internlm2.count_params(model_cfg),
        params_bytes=per_device_bytes(state["params"]),
        opt_state_bytes=per_device_bytes(state["opt_state"]),
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        flops_per_step=flops_per_token(model_cfg, train_cfg.seq_len) * train_cfg.batch_size * train_cfg.seq_len,
    )
