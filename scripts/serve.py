"""Serve a model over an OpenAI-compatible HTTP API (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``).

    python scripts/serve.py --model PATH [--host 127.0.0.1] [--port 23333] [--served-model-name NAME]
        [--api-key KEY | --api-keys FILE] [--max-batch-size N] [--block-size N] [--num-blocks N]
        [--max-num-tokens N] [--max-model-len N] [--[no-]enable-prefix-caching] [--kv-int8] [--max-queue N]
        [--chat-template FILE] [--tool-call-parser {auto,internlm2,hermes}] [--tp N]

Every request is scheduled by the serving engine (continuous batching over a paged KV cache). Point any
OpenAI client at ``http://HOST:PORT/v1``. ``GET /health``, ``GET /stats`` (JSON), ``GET /metrics``
(Prometheus text), ``/docs`` and a web chat page at ``/`` are served too. Binds to loopback unless ``--host``
says otherwise. SIGTERM (or Ctrl-C) drains: new connections are refused at once, requests in flight finish
(for up to ``--drain-timeout`` seconds, then they are cut off), and the server exits with status 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from intern_jax import cli  # light: no jax


def _api_keys(args) -> list[str]:
    keys = [args.api_key] if args.api_key else []
    if args.api_keys:
        lines = Path(args.api_keys).read_text(encoding="utf-8").splitlines()
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ValueError(f"--api-keys {args.api_keys} holds no key; write one key per line")
    return keys


@cli.entry("serve.py")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint: GGUF file, HF directory or native checkpoint")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    ap.add_argument("--port", type=int, default=23333)
    ap.add_argument("--served-model-name", help="the model name clients send (default: the --model file's stem)")
    keys = ap.add_mutually_exclusive_group()
    keys.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/*")
    keys.add_argument("--api-keys", metavar="FILE", help="like --api-key, one key per line of FILE")
    engine = ap.add_argument_group("engine")
    engine.add_argument("--max-batch-size", type=int, default=64, help="sequences decoded together")
    engine.add_argument("--max-num-tokens", type=int, default=512, help="tokens per step (decode + prefill chunks)")
    engine.add_argument("--block-size", type=int, default=64, help="tokens per KV page")
    engine.add_argument("--num-blocks", type=int, default=0, help="KV pages (0: a quarter context per sequence)")
    engine.add_argument("--max-model-len", type=int, default=0, help="context per request (0: the model's)")
    engine.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse the KV pages of shared prompt prefixes")
    engine.add_argument("--kv-int8", action="store_true", help="int8 KV cache")
    engine.add_argument("--max-top-logprobs", type=int, default=5, help="most top_logprobs a request may ask for")
    engine.add_argument("--tp", type=int, default=1, help="tensor-parallel devices the weights are sharded over")
    engine.add_argument("--warm-up", action="store_true",
                        help="compile the decode step for every count of live sequences and one-sequence prefill "
                             "for every stream length before listening (a restart reads them from the "
                             "compilation cache), so first requests do not wait for compiles")
    ap.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template to use instead of the model's")
    ap.add_argument("--tool-call-parser", choices=["auto", "internlm2", "hermes"], default="auto",
                    help="the tool-call format the model speaks (auto: from its chat template)")
    ap.add_argument("--max-queue", type=int, default=256,
                    help="requests that may wait beyond the running batch; more get 429")
    ap.add_argument("--drain-timeout", type=float, default=30.0,
                    help="on SIGTERM, seconds that requests in flight get to finish (default 30)")
    ap.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    if not args.drain_timeout >= 0:
        raise ValueError(f"--drain-timeout must be >= 0 seconds, got {args.drain_timeout}")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {args.max_queue}")
    api_keys = _api_keys(args)
    from intern_jax.serve.tools import check_chat_template, read_chat_template

    chat_template = read_chat_template(args.chat_template) if args.chat_template else None

    import uvicorn

    from intern_jax.checkpoint import load_model
    from intern_jax.serve import Engine, EngineConfig
    from intern_jax.serve.app import create_app

    try:
        config = EngineConfig(max_batch_size=args.max_batch_size, max_num_tokens=args.max_num_tokens,
                              block_size=args.block_size, num_blocks=args.num_blocks,
                              max_model_len=args.max_model_len, enable_prefix_caching=args.enable_prefix_caching,
                              kv_int8=args.kv_int8, num_top_logprobs=args.max_top_logprobs, tp=args.tp)
    except ValueError as e:  # "EngineConfig.max_batch_size must be ..." -> "--max-batch-size must be ..."
        field = str(e).split()[0].removeprefix("EngineConfig.")
        flag = "--max-top-logprobs" if field == "num_top_logprobs" else "--" + field.replace("_", "-")
        raise ValueError(f"{flag} {str(e).split(' ', 1)[1]}") from None
    model = load_model(args.model)
    if model.tokenizer is None:
        raise ValueError(f"--model {args.model} carries no tokenizer; the server needs one (a GGUF file or a "
                         "checkpoint directory with tokenizer.json / tokenizer.model)")
    if chat_template is not None:
        model.tokenizer.chat_template = chat_template
        check_chat_template(model.tokenizer, f"--chat-template {args.chat_template}")
    name = args.served_model_name or Path(args.model).stem
    serving = Engine(model, config)
    if args.warm_up:
        from tqdm import tqdm

        t0 = time.perf_counter()
        with tqdm(desc="serve.py: compiling", unit="shape", file=sys.stderr) as bar:
            def advance(done, total):
                bar.total = total
                bar.update(done - bar.n)

            compiled = serving.warm_up(advance)
        print(f"serve.py: warm-up compiled {compiled} programs in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
              flush=True)
    app = create_app(serving, name, api_keys=api_keys, max_queue=args.max_queue,
                     tool_call_parser=args.tool_call_parser)
    print(f"serve.py: serving {name!r} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    # uvicorn drains on SIGTERM / SIGINT (closes the listener, lets responses in flight finish within the
    # timeout), then raises the signal again with the handler it found: this one, so a drain exits with 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.drain_timeout)
    serving.close()
    print("serve.py: drained and stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
