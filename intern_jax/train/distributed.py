"""Multi-process start-up: ``jax.distributed.initialize`` from explicit flags or SLURM's environment.

One process per host (GPU nodes: one per node driving all its GPUs; TPU pods: one per
host, where jax finds the coordinator itself). On CPU, collectives go through gloo, so
several processes on one machine can train together (tests). This module does not launch
processes; scripts/launch/slurm.sh does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistributedSpec:
    coordinator: str
    num_processes: int
    process_id: int
    local_device_ids: tuple[int, ...] | None = None


def spec_from_slurm(env=None, port: int = 12355) -> DistributedSpec | None:
    """The spec of a SLURM job step with more than one task (None otherwise).

    The coordinator is the first host of ``SLURM_JOB_NODELIST`` (or ``MASTER_ADDR``);
    one task per node is expected (``--ntasks-per-node=1``).
    """
    env = os.environ if env is None else env
    ntasks = int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")))
    if ntasks <= 1 or "SLURM_PROCID" not in env:
        return None
    host = env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "")))
    if not host:
        raise ValueError(
            "SLURM job with several tasks but no SLURM_JOB_NODELIST or MASTER_ADDR to find the coordinator"
        )
    port = int(env.get("MASTER_PORT", port))
    return DistributedSpec(f"{host}:{port}", ntasks, int(env["SLURM_PROCID"]))


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``gpu[003-005,9],cpu1`` -> ``gpu003``."""
    nodelist = nodelist.strip()
    if not nodelist:
        return ""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[: nodelist.index("]") + 1]
    if "[" not in head:
        return head
    prefix, ranges = head.split("[", 1)
    first = ranges.rstrip("]").split(",")[0].split("-")[0]
    return prefix + first


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, cpu_collectives: str = "gloo") -> bool:
    """Join the process group. Explicit arguments win; else SLURM; else nothing (single process).

    ``coordinator="auto"`` lets jax find everything itself (TPU pods, and the clusters jax
    detects). Must run before any other jax call. Returns True when a group was joined.
    """
    import jax  # noqa: PLC0415

    if coordinator == "auto":
        jax.distributed.initialize()
        return True
    if coordinator is not None or num_processes is not None or process_id is not None:
        if None in (coordinator, num_processes, process_id):
            raise ValueError("--coordinator, --num-processes and --process-id go together; give all three")
        host, colon, port = coordinator.rpartition(":")
        if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"--coordinator {coordinator!r}: give HOST:PORT of process 0 (e.g. node0:12345), "
                             "or 'auto'")
        spec = DistributedSpec(coordinator, int(num_processes), int(process_id))
    else:
        spec = spec_from_slurm()
    if spec is None or spec.num_processes <= 1:
        return False
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or _no_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=spec.coordinator, num_processes=spec.num_processes, process_id=spec.process_id
    )
    return True


def _no_accelerator() -> bool:
    import importlib.util  # noqa: PLC0415

    return not any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))
