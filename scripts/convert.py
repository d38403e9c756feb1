"""Convert a checkpoint between formats: GGUF / Hugging Face (InternLM2, Llama) / native / run -> native, HF or PEFT.

    python scripts/convert.py --input model.gguf --output out/ --to internlm2 --dtype bfloat16
    python scripts/convert.py --input runs/smollm2_lora_sft --output out/ --to llama   # adapters merged
    python scripts/convert.py --input runs/smollm2_lora_sft --output out/ --to peft    # adapters alone

The input format is detected; the output directory must be new or empty.
"""

from __future__ import annotations

import argparse
import sys

from intern_jax import cli  # light: no jax

# Kept in step with intern_jax.checkpoint.CONVERT_TARGETS (listed here so --help needs no jax import).
TARGETS = {
    "native": "the project's orbax directory (params + model_config.json + tokenizer)",
    "internlm2": "Hugging Face InternLM2 layout (packed wqkv)",
    "llama": "Hugging Face Llama layout (loads in transformers' LlamaForCausalLM)",
    "peft": "the adapters of a LoRA/QLoRA run directory alone, as a PEFT adapter for its base model",
}
DTYPES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="targets: " + "; ".join(f"{k}: {v}" for k, v in TARGETS.items()),
    )
    parser.add_argument("--input", required=True, help="a .gguf file or a Hugging Face / native checkpoint directory")
    parser.add_argument("--output", required=True, help="directory to write (new or empty)")
    parser.add_argument("--to", required=True, choices=list(TARGETS), help="output format")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="dtype of the written weights (default: float32, or as stored for native input)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug_flag(parser)
    return parser


@cli.entry("convert.py")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from intern_jax.checkpoint import convert_checkpoint  # noqa: PLC0415  (after parsing: --help stays fast)

    cli.output_dir(args.output)
    out = convert_checkpoint(args.input, args.output, to=args.to, dtype=args.dtype, progress=not args.quiet)
    print(f"wrote {args.to} checkpoint to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
