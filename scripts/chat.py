"""Multi-turn chat in the terminal, streaming; the KV cache is kept across turns.

    python scripts/chat.py --model PATH [--system TEXT] [--max-new-tokens N] [--temperature T]
        [--top-k K] [--top-p P] [--seed S]
    python scripts/chat.py --url http://HOST:PORT/v1 [--api-key KEY] [--model NAME] [same options]

Each turn prefills only the new tokens. With --url the chat talks to a running OpenAI-compatible server
(scripts/serve.py or any other; --model names the served model, default the first it lists; --api-key,
default $OPENAI_API_KEY) and streams from its /chat/completions. Commands: /reset starts over, /quit (or /exit, EOF, or
Ctrl-C at the prompt) leaves; Ctrl-C during a reply stops it (the conversation starts over). A
message that starts with '/' is sent by doubling it ('//etc/hosts ...'). Bytes that are not valid
UTF-8 are replaced (with a warning) and the conversation goes on.
"""

from __future__ import annotations

import argparse
import os
import sys

from intern_jax import cli  # light: no jax

COMMANDS = {"/reset": "start a new conversation", "/quit": "leave", "/exit": "leave"}


@cli.entry("chat.py")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint: GGUF file, HF directory or native checkpoint; with --url, the "
                                    "served model's name (default: the first the server lists)")
    ap.add_argument("--url", help="chat with a running OpenAI-compatible server, e.g. http://127.0.0.1:23333/v1")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                    help="with --url: the server's key (default: $OPENAI_API_KEY)")
    ap.add_argument("--system", help="system message")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", action="store_true", help="print timings after each reply (stderr)")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)
    if not args.url and not args.model:
        raise ValueError("give --model PATH (a checkpoint) or --url http://HOST:PORT/v1 (a running server)")

    sampling = cli.sampling_params(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                   seed=args.seed, max_new_tokens=args.max_new_tokens)
    system = None if args.system is None else cli.utf8_text(args.system, "--system")
    if args.url:
        from intern_jax.serve.client import RemoteChatSession

        remote = RemoteChatSession(args.url, sampling, system=system, model=args.model, api_key=args.api_key)

        def new_session():
            remote.reset()
            return remote
    else:
        from intern_jax.checkpoint import load_model
        from intern_jax.inference import ChatSession, Decoder

        model = load_model(args.model)
        if model.tokenizer is None:
            raise ValueError(f"--model {args.model} carries no tokenizer; chat needs one (a GGUF file or a "
                             "checkpoint directory with tokenizer.json / tokenizer.model)")
        decoder = Decoder.from_model(model)  # shared by every session: compiled once

        def new_session():
            return ChatSession(decoder, sampling, system=system)

    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # a bad byte is replaced below, not fatal to the session

    session = new_session()
    while True:
        try:
            text = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        command = text.strip()
        if command in ("/quit", "/exit"):
            return 0
        if command == "/reset":
            session = new_session()
            continue
        if command.startswith("/") and not command.startswith("//") and " " not in command:
            known = ", ".join(f"{name} ({what})" for name, what in COMMANDS.items())
            print(f"unknown command {command}; commands: {known}. To send a message that starts with '/', "
                  "write '//'.", file=sys.stderr)
            continue
        if command.startswith("//"):
            text = text.replace("//", "/", 1)
        if not command:
            continue
        text = cli.utf8_text(text, "this message")
        sys.stdout.write("assistant> ")
        try:
            for piece in session.send(text):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except ValueError as e:
            print(f"\nerror: {e}; the conversation starts over", file=sys.stderr)
            session = new_session()
            continue
        except ConnectionError as e:  # --url: the server refused or failed this turn; the conversation goes on
            print(f"\nerror: {e}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # Ctrl-C stops a reply, not the program (Ctrl-C at the prompt leaves)
            print("\n[reply stopped; the conversation starts over]", file=sys.stderr)
            session = new_session()
            continue
        sys.stdout.write("\n")
        if args.stats and args.url and session.last_usage is not None:
            rate = session.last_tokens_per_s
            print(f"[{session.last_usage['prompt_tokens']} prompt tokens, {session.last_usage['completion_tokens']} "
                  f"generated, {rate or 0:.1f} tok/s]", file=sys.stderr)
        elif args.stats and not args.url and session.last_result is not None:
            r = session.last_result
            print(f"[prefilled {session.prefilled_tokens} new tokens, {r.num_generated[0]} generated, "
                  f"{r.decode_tokens_per_s:.1f} tok/s]", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
