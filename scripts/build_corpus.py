"""Build the embedded default corpus from the Python standard library (code + docstrings).

    python scripts/build_corpus.py [--output runs/corpus] [--vocab-size 8000]

Writes token shards, manifest.json, stats.json and a SentencePiece tokenizer into the output
directory. Rerunning reuses finished work.
"""

from __future__ import annotations

import argparse
import sys

from intern_jax import cli  # light: no jax


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/corpus", help="output directory (default: runs/corpus)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece vocabulary size")
    parser.add_argument("--max-code-mb", type=float, default=6.0, help="cap on standard-library source read")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug_flag(parser)
    return parser


@cli.entry("build_corpus.py")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from intern_jax.data.corpus import build_corpus, check_corpus_settings  # noqa: PLC0415

    check_corpus_settings(vocab_size=args.vocab_size, max_code_mb=args.max_code_mb)
    build_corpus(cli.output_dir(args.output), vocab_size=args.vocab_size,
                 max_code_bytes=int(args.max_code_mb * (1 << 20)), progress=not args.quiet)
    print(f"wrote {args.output}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
