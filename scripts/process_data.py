"""Process raw text into cleaned, deduplicated, tokenised ArrayRecord shards.

    python scripts/process_data.py --input data/ more.jsonl --output runs/data [--config configs/data/default.py]
        [--set dedup.threshold=0.8] [--runner beam]

Reads JSONL, text/Markdown, HTML, Parquet and source trees; writes DIR/<source>/*.array_record,
DIR/manifest.json, DIR/stats.json and DIR/funnel.png. Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from intern_jax import cli  # noqa: E402  (light: no jax)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="files or directories to read")
    parser.add_argument("--output", required=True, help="output directory (reused to resume)")
    parser.add_argument("--config", help="a Python config file binding `config = ProcessingConfig(...)`")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--runner", choices=("local", "beam"), help="local processes (default) or Apache Beam")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug_flag(parser)
    return parser


@cli.entry("process_data.py")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from intern_jax.config import ConfigError, apply_overrides, load_config  # noqa: PLC0415
    from intern_jax.data.processing import runner  # noqa: PLC0415
    from intern_jax.data.processing.config import ProcessingConfig  # noqa: PLC0415

    overrides = [*args.set, *([f"runner={args.runner}"] if args.runner else [])]
    cfg = load_config(args.config, overrides) if args.config else apply_overrides(ProcessingConfig(), overrides)
    if not isinstance(cfg, ProcessingConfig):
        raise ConfigError(f"{args.config} binds a {type(cfg).__name__}, expected a ProcessingConfig")
    stats = runner.process(args.input, cli.output_dir(args.output), cfg, progress=not args.quiet)
    for problem in runner.read_problems(stats, args.output, cfg.readers.text_field):
        print(f"process_data.py: warning: dropped {problem}", file=sys.stderr)
    print(f"wrote {args.output}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
