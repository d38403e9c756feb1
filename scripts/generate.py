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

from intern_jax import cli  # light: no jax


@cli.entry("generate.py")
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
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)
    if args.system is not None and args.chat is None:
        ap.error("--system needs --chat")

    from intern_jax.checkpoint import load_model
    from intern_jax.inference import Decoder, generate_text

    sampling = cli.sampling_params(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, max_new_tokens=args.max_new_tokens,
    )
    system = None if args.system is None else cli.utf8_text(args.system, "--system")
    if args.chat is not None:
        request = [{"role": "user", "content": cli.utf8_text(args.chat, "--chat")}]
    else:
        request = cli.utf8_text(args.prompt, "--prompt")
        if not request:
            raise ValueError("--prompt is empty; give text to continue (or a message with --chat)")
    model = load_model(args.model)
    if model.tokenizer is None:
        raise ValueError(f"--model {args.model} carries no tokenizer; generate.py needs one (a GGUF file or a "
                         "checkpoint directory with tokenizer.json / tokenizer.model)")
    model = Decoder.from_model(model)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    _, result = generate_text(model, request, sampling, system=system, on_text=show)
    sys.stdout.write("\n")
    if args.stats:
        print(json.dumps(result.stats()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
