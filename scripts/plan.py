"""Plan before you pay: compile a run's train step for N devices and print per-device memory.

    python scripts/plan.py --config configs/pretrain/internlm2_7b.py --devices 8 \
        [--mesh data=1,fsdp=8,sequence=1,tensor=1] [--set a.b=v ...] [--device-memory-gb 80]

Runs on this machine's CPU with N fake devices (no weights are allocated, nothing is run);
the numbers are XLA's for the compiled program. CPU and GPU compilers differ somewhat in
the temporaries they need, so leave headroom.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from intern_jax import cli  # light: no jax


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="pretrain config file")
    ap.add_argument("--devices", type=int, required=True, help="number of devices to plan for")
    ap.add_argument("--mesh", help="mesh shape, e.g. data=2,fsdp=4,sequence=1,tensor=1 (default: the config's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device-memory-gb", type=float, default=None, help="say whether the peak fits in this much")
    cli.add_debug_flag(ap)
    return ap


def parse_mesh(text: str) -> dict[str, int]:
    from intern_jax.sharding import MESH_AXES  # noqa: PLC0415  (imports jax: only after the device flags are set)

    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in MESH_AXES or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh {text!r}: use comma-separated {','.join(a + '=N' for a in MESH_AXES)} "
                             "(one may be -1)")
        out[key.strip()] = int(value)
    return out


@cli.entry("plan.py")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.devices < 1:
        raise ValueError(f"--devices must be >= 1, got {args.devices}")
    if args.device_memory_gb is not None and not 0 < args.device_memory_gb < float("inf"):
        raise ValueError(f"--device-memory-gb must be a positive number, got {args.device_memory_gb}")
    # fake devices must be requested before jax is imported
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from intern_jax.sharding import MESH_AXES, make_mesh  # noqa: PLC0415
    from intern_jax.train.config import load_train_config  # noqa: PLC0415
    from intern_jax.train.plan import plan_memory  # noqa: PLC0415
    from intern_jax.train.pretrain import resolve_vocab_size  # noqa: PLC0415

    cfg = load_train_config(args.config, args.overrides)
    cfg = resolve_vocab_size(cfg, hint="; build it first (scripts/build_corpus.py for the embedded corpus) "
                                       "or plan with --set model.vocab_size=N")
    if args.mesh:
        shape = {**dict.fromkeys(MESH_AXES, 1), **parse_mesh(args.mesh)}
        cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, **shape))
    mesh = make_mesh(cfg.parallel.mesh_shape())
    plan = plan_memory(cfg, mesh)
    print(f"{cfg.name or Path(args.config).stem}: batch {cfg.batch_size} x {cfg.seq_len} tokens, "
          f"{cfg.parallel.micro_batches} micro-batches, zero={cfg.parallel.zero}, remat={cfg.execution.remat}")
    print(plan.table(args.device_memory_gb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
