"""Pretrain a model: typed config file, --set overrides, resumable run directory.

    python scripts/pretrain.py --config configs/pretrain/tiny.py [--set a.b=v ...]
        [--output DIR] [--steps N] [--save-every N]
        [--coordinator HOST:PORT --num-processes N --process-id I]

Rerunning the same command resumes from the latest checkpoint in --output. Under SLURM
(several tasks) the process group is formed from the environment. Exit status: 0 done,
2 bad configuration or input, 3 the run diverged (non-finite steps; last good state saved),
130 interrupted (Ctrl-C: the current step finishes and a checkpoint is saved; rerun to resume).
"""

from __future__ import annotations

import argparse
import sys

from intern_jax import cli  # light: no jax


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="pretrain config file (binds `config` to a TrainConfig)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set optimizer.learning_rate=1e-3 (repeatable)")
    ap.add_argument("--output", help="run directory (default: runs/<config name>)")
    ap.add_argument("--steps", type=int, help="total training steps (overrides steps)")
    ap.add_argument("--save-every", type=int, help="checkpoint every N steps (overrides checkpoint.save_every)")
    ap.add_argument("--coordinator",
                    help="HOST:PORT of process 0 for multi-process runs; 'auto' lets jax detect it (TPU pods)")
    ap.add_argument("--num-processes", type=int)
    ap.add_argument("--process-id", type=int)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_debug_flag(ap)
    return ap


@cli.entry("pretrain.py")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from intern_jax.train import distributed  # noqa: PLC0415

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    from intern_jax.train.loop import run_from_cli  # noqa: PLC0415
    from intern_jax.train.pretrain import prepare_run, pretrain  # noqa: PLC0415

    return run_from_cli("pretrain.py", args, prepare_run, pretrain)[0]


if __name__ == "__main__":
    sys.exit(main())
