"""Check an SFT / continued-pretraining dataset before training: every bad row with its line and reason.

    python scripts/check_dataset.py data.jsonl [--format messages|alpaca|text] [--model PATH] [--max-length N]

With --model (any checkpoint load_model reads, or a tokenizer directory) rows are also rendered
with its chat template, so template errors and over-long conversations show up too.
Exit status: 0 all rows usable, 1 some rows bad, 2 the file cannot be read at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from intern_jax import cli  # light: no jax


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="a messages JSONL, Alpaca JSON/JSONL, or text (.txt / JSONL with 'text') file")
    ap.add_argument("--format", default="auto", choices=["auto", "messages", "alpaca", "text"])
    ap.add_argument("--model", help="checkpoint or tokenizer directory whose tokenizer renders the rows")
    ap.add_argument("--max-length", type=int, default=0, help="token limit per example (0: no limit)")
    ap.add_argument("--limit", type=int, default=50, help="print at most this many bad rows (0: all)")
    cli.add_debug_flag(ap)
    return ap


def load_tokenizer_of(path: str):
    from intern_jax.tokenizer import Tokenizer, load_tokenizer  # noqa: PLC0415

    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return Tokenizer.from_gguf(p)
    return load_tokenizer(p)


@cli.entry("check_dataset.py")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_length < 0 or args.limit < 0:
        raise ValueError(f"--max-length and --limit must be >= 0 (0: no limit), got {args.max_length} and "
                         f"{args.limit}")
    from intern_jax.data import sft  # noqa: PLC0415

    tokenizer = load_tokenizer_of(args.model) if args.model else None
    stats, bad = sft.check_file(args.file, args.format, tokenizer, args.max_length, format_setting="--format")
    shown = bad if not args.limit else bad[: args.limit]
    for line, reason in shown:
        print(f"{args.file}:{line}: {reason}")
    if len(shown) < len(bad):
        print(f"... and {len(bad) - len(shown)} more bad rows")
    print(stats.summary())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
