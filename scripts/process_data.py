"""Process raw text into cleaned, deduplicated, tokenised ArrayRecord shards.

    python scripts/process_data.py --input data/ more.jsonl --output runs/data [--config configs/data/default.py]
        [--set dedup.threshold=0.8] [--runner beam] [--pdf-backend pymupdf]
    python scripts/process_data.py --input papers/ --extract-only runs/extracted

Reads JSONL, text/Markdown, HTML, Parquet, source trees and PDF, EPUB and DOCX documents (as
Markdown; scanned pages through OCR); writes DIR/<source>/*.array_record, DIR/manifest.json,
DIR/stats.json and DIR/funnel.png. Rerunning the same command resumes. ``--extract-only OUTDIR``
writes each document's Markdown and a JSON sidecar (pages, OCR'd pages, tables, time) and stops.
"""

from __future__ import annotations

import argparse
import sys

from intern_jax import cli  # light: no jax


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="files or directories to read")
    parser.add_argument("--output", help="output directory (reused to resume); required unless --extract-only")
    parser.add_argument("--extract-only", metavar="OUTDIR",
                        help="only extract PDF/EPUB/DOCX inputs to OUTDIR/<name>.md + <name>.json, then stop")
    parser.add_argument("--pdf-backend", choices=("pymupdf", "pymupdf4llm", "mineru"),
                        help="PDF extraction: pymupdf (default), pymupdf4llm (layout model, slow), mineru")
    parser.add_argument("--config", help="a Python config file binding `config = ProcessingConfig(...)`")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--runner", choices=("local", "beam"), help="local processes (default) or Apache Beam")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug_flag(parser)
    return parser


@cli.entry("process_data.py")
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.output and not args.extract_only:
        parser.error("--output is required (or --extract-only OUTDIR)")
    from intern_jax.config import ConfigError, apply_overrides, load_config  # noqa: PLC0415
    from intern_jax.data.processing import extract, runner  # noqa: PLC0415
    from intern_jax.data.processing.config import ProcessingConfig  # noqa: PLC0415

    overrides = [*args.set, *([f"runner={args.runner}"] if args.runner else []),
                 *([f"readers.documents.pdf_backend={args.pdf_backend}"] if args.pdf_backend else [])]
    cfg = load_config(args.config, overrides) if args.config else apply_overrides(ProcessingConfig(), overrides)
    if not isinstance(cfg, ProcessingConfig):
        raise ConfigError(f"{args.config} binds a {type(cfg).__name__}, expected a ProcessingConfig")
    extract.check_backend(cfg.readers.documents)
    if args.extract_only:
        summary = extract.extract_inputs(args.input, cli.output_dir(args.extract_only), cfg, progress=not args.quiet)
        for f in summary["failures"]:
            print(f"process_data.py: warning: {f['path']}: {f['reason']}: {f['message']}", file=sys.stderr)
        print(f"extracted {summary['extracted']} of {summary['documents']} documents ({summary['pages']} pages, "
              f"{summary['ocr_pages']} OCR'd) to {args.extract_only}; summary in {args.extract_only}/extract.json")
        return 0
    stats = runner.process(args.input, cli.output_dir(args.output), cfg, progress=not args.quiet)
    for problem in runner.read_problems(stats, args.output, cfg.readers.text_field):
        print(f"process_data.py: warning: dropped {problem}", file=sys.stderr)
    print(f"wrote {args.output}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
