"""Plot a training run's loss and throughput from RUN_DIR/metrics.jsonl.

    python scripts/plot_metrics.py RUN_DIR [--output DIR]

Writes loss.png (loss and learning rate) and throughput.png (tokens/s and MFU) into RUN_DIR
(or --output).
"""

from __future__ import annotations

import argparse
import sys

from intern_jax import cli  # light: no jax


@cli.entry("plot_metrics.py")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="training run directory (holds metrics.jsonl)")
    ap.add_argument("--output", help="directory for the PNGs (default: RUN_DIR)")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)
    from intern_jax.train.metrics import plot_metrics  # noqa: PLC0415

    if args.output:
        cli.output_dir(args.output)
    files = plot_metrics(args.run_dir, args.output)
    for f in files:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
