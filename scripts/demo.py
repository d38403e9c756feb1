"""The main job on the embedded default: load SmolLM2-135M-Instruct (GGUF) and answer a chat, streaming.

Usage: python scripts/demo.py [--model PATH] [--prompt TEXT] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import intern_jax as ij  # noqa: E402
from intern_jax.inference import prepare_params  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded SmolLM2 GGUF)")
    parser.add_argument("--prompt", default="Explain in two sentences what a KV cache is in a language model.")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args(argv)

    path = args.model or ij.embedded_model_path()
    print(f"== loading {path}", flush=True)
    start = time.perf_counter()
    model = ij.load_model(path)
    params, cfg = prepare_params(model.params, model.config)  # the fast decode layout
    model = model._replace(params=params, config=cfg)
    print(
        f"   {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads}/{cfg.num_kv_heads} heads, "
        f"vocab {cfg.vocab_size}; loaded in {time.perf_counter() - start:.1f}s",
        flush=True,
    )
    print(f"== user: {args.prompt}\n== assistant: ", end="", flush=True)
    sampling = ij.SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    _, result = ij.generate_text(
        model, [{"role": "user", "content": args.prompt}], sampling,
        on_text=lambda piece: print(piece, end="", flush=True),
    )
    stats = result.stats()
    print(
        f"\n== {stats['generated_tokens']} tokens; decode {stats['decode_tokens_per_s']:.1f} tok/s, "
        f"prefill {stats['prefill_tokens_per_s']:.1f} tok/s, compile {stats['compile_s']:.1f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
