"""Generate text with a model: prints only the generated text to stdout.

    python scripts/generate.py --model PATH --chat "Hi!" [--system TEXT] [--max-new-tokens N]
        [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S] [--stats]

``--temperature 0`` is greedy; ``--chat`` applies the model's chat template; ``--stats``
prints one JSON line to stderr (token counts, prefill/decode tokens per second, compile seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint: GGUF file, HF directory or native checkpoint")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="plain text to continue")
    group.add_argument("--chat", help="a user message; the chat template is applied")
    ap.add_argument("--system", help="system message (with --chat)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", action="store_true", help="print a JSON line of timings to stderr")
    args = ap.parse_args(argv)
    if args.system is not None and args.chat is None:
        ap.error("--system needs --chat")

    from intern_jax.checkpoint import load_model
    from intern_jax.inference import SamplingParams, generate_text, prepare_params

    try:
        sampling = SamplingParams(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            repetition_penalty=args.repetition_penalty, seed=args.seed, max_new_tokens=args.max_new_tokens,
        )
    except ValueError as e:
        ap.error(str(e))
    model = load_model(args.model)
    params, cfg = prepare_params(model.params, model.config)
    model = model._replace(params=params, config=cfg)
    request = [{"role": "user", "content": args.chat}] if args.chat is not None else args.prompt

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        _, result = generate_text(model, request, sampling, system=args.system, on_text=show)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    if args.stats:
        print(json.dumps(result.stats()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
