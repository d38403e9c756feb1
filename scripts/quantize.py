"""Quantize a model's projections to 4- or 8-bit packed weights and write a native checkpoint.

    python scripts/quantize.py --model M --method {rtn,awq} --bits {4,8} [--group-size 128]
        --output DIR [--calib FILE|embedded] [--calib-samples 32] [--calib-seq-len 256] [--head]

RTN rounds every group to nearest (8-bit symmetric, 4-bit min-max); AWQ first searches
activation-aware per-channel scales on calibration text (``embedded``: built-in standard-library
docstrings, nothing downloaded) and folds them into the preceding norms. ``--head`` packs the
output head too. The output loads with every ``--model`` flag (``load_model``) with its weights
kept packed. Prints one JSON line: parameter bytes before and after, seconds, and for AWQ its
output error relative to RTN's on the calibration activations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from intern_jax import cli  # light: no jax


@cli.entry("quantize.py")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="full-precision checkpoint: GGUF file, HF or native directory")
    ap.add_argument("--method", choices=("rtn", "awq"), default="awq")
    ap.add_argument("--bits", "--w-bits", dest="bits", type=int, default=4, help="4 or 8")
    ap.add_argument("--group-size", type=int, default=128, help="input rows per scale (must divide every input)")
    ap.add_argument("--output", required=True, help="new or empty directory for the quantized checkpoint")
    ap.add_argument("--calib", "--calib-data", dest="calib", default="embedded",
                    help="calibration text file (UTF-8), or 'embedded' for the built-in text (AWQ only)")
    ap.add_argument("--calib-samples", type=int, default=32, help="calibration windows")
    ap.add_argument("--calib-seq-len", type=int, default=256, help="tokens per calibration window")
    ap.add_argument("--head", action="store_true", help="also pack the output head")
    ap.add_argument("--awq-wo", action="store_true",
                    help="AWQ: search wo's scale too (folded into the value columns; default: RTN for wo)")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)
    if args.bits not in (4, 8):
        raise ValueError(f"--bits must be 4 or 8, got {args.bits}")
    if args.group_size < 2 or args.group_size % 2:
        raise ValueError(f"--group-size must be an even number >= 2, got {args.group_size}")
    output = cli.output_dir(args.output)
    calib_text = None
    if args.method == "awq" and args.calib != "embedded":
        calib_text = cli.utf8_text(Path(args.calib).read_text(encoding="utf-8"), f"--calib {args.calib}")

    from intern_jax.checkpoint import load_model, quantized

    t0 = time.perf_counter()
    model = load_model(args.model)
    packed, report = quantized.quantize_model(
        model, method=args.method, bits=args.bits, group_size=args.group_size, calib_text=calib_text,
        calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len, head=args.head, awq_wo=args.awq_wo)
    quantized.save_quantized(output, packed.config, packed.params, packed.tokenizer, method=args.method)
    report.update(output=str(output), seconds=round(time.perf_counter() - t0, 1))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
