"""Serving benchmark over HTTP (vLLM's bench_serving recipe): our server against a plain FastAPI endpoint
and llama.cpp's server.

    python scripts/bench/serving.py [--concurrency 1,4,16] [--rates 2] [--output-tokens 16] [--seed 0]
        [--png docs/serving_bench.png] [--llama-cpp-python PYTHON] [--url http://HOST:PORT/v1 --model NAME]

Without ``--url`` it starts the servers on loopback over the embedded SmolLM2 GGUF, one after the other,
and runs the same workload against each:

- intern-jax: ``scripts/serve.py --warm-up`` (the engine, float32 weights: continuous batching over a
  paged KV cache; started with its decode steps and one-sequence prefills compiled);
- plain: this file with ``--plain-server``, a FastAPI endpoint that streams ``stream_generate`` for one
  request at a time (what you get without an engine);
- llama.cpp, with ``--llama-cpp-python PYTHON`` (an interpreter with ``llama-cpp-python[server]``
  installed): ``PYTHON -m llama_cpp.server`` on the same GGUF file (its Q4_1 blocks), as many threads as
  cores, requests not interrupted by newer ones. It has no ``ignore_eos``: the requests ban the model's
  end-of-turn tokens by ``logit_bias`` instead.

With ``--url`` it measures that one server instead (any OpenAI-compatible one that streams and honours
``ignore_eos``). The client streams ``/v1/chat/completions`` over aiohttp: every request generates exactly
``--output-tokens`` tokens (stop tokens ignored); prompts are chat messages of log-normal length drawn
from ``--seed``. Sweeps: a closed loop at each ``--concurrency`` (``max(4, c)`` requests, c in flight)
and an open loop at each ``--rates`` (Poisson arrivals, requests per second; 16 requests). Each server
first gets a warm-up pass over the same prompts (ours at every concurrency, with its prefix cache off so
the warm-up saves it no prefill; the peer once) so compiling is not timed, and our server's count of
compiled executables before and after the timed points is printed.
Per point: request/s, output tok/s, time to first token (TTFT), time per output token after the first
(TPOT) and inter-token latency (ITL), p50 / p99. Prints a JSON line per point and markdown tables, and
draws output tok/s against TPOT p50 (the throughput-latency curve) to ``--png``.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_name  # this directory: run as a script

ROOT = Path(__file__).resolve().parents[2]


# -- the plain peer -------------------------------------------------------------------------------


def plain_server(port: int) -> None:
    """A FastAPI ``/v1/chat/completions`` that streams ``stream_generate`` for one request at a time."""
    import threading

    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    from intern_jax.checkpoint import embedded_model_path, load_model
    from intern_jax.inference import Decoder, SamplingParams, encode_prompt
    from intern_jax.inference.generate import stream_generate

    decoder = Decoder.from_model(load_model(embedded_model_path()))
    tok = decoder.tokenizer
    one_at_a_time = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        ids = encode_prompt(tok, body["messages"])
        sampling = SamplingParams(max_new_tokens=int(body["max_tokens"]))  # no stop ids: exactly max_tokens
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def run():
            with one_at_a_time:
                for step in stream_generate(decoder, [ids], sampling):
                    if step[0] is not None:
                        loop.call_soon_threadsafe(queue.put_nowait, tok.decode([step[0]]))
            loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = loop.run_in_executor(None, run)

        async def events():
            n = 0
            while (piece := await queue.get()) is not None:
                n += 1
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
            await worker
            yield f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': n}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- the client ------------------------------------------------------------------------------------


def workload(n: int, seed: int) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    words = "the of a river stone light museum engine garden winter number story market bridge".split()
    return [[{"role": "user", "content": " ".join(rng.choice(words, int(np.clip(rng.lognormal(3.3, 0.8), 4, 300))))}]
            for _ in range(n)]


async def one_request(client, url: str, model: str, messages, tokens: int, extra: dict | None = None) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}, **(extra or {})}
    start = time.perf_counter()
    stamps, n = [], None
    async with client.post(url + "/chat/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.read())[:300]!r}")
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                n = event["usage"]["completion_tokens"]
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or ()):
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    n = n if n is not None else len(stamps)
    return {"start": start, "end": end, "ttft": stamps[0] - start, "tokens": n,
            "tpot": (end - stamps[0]) / (n - 1) if n > 1 else None, "itl": list(np.diff(stamps))}


async def run_point(url: str, model: str, prompts, tokens: int, concurrency: int | None = None,
                    rate: float | None = None, seed: int = 0, extra: dict | None = None) -> dict:
    """A closed loop (``concurrency`` in flight) or an open loop (Poisson arrivals at ``rate`` per second)."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as client:
        t0 = time.perf_counter()
        if concurrency is not None:
            gate = asyncio.Semaphore(concurrency)

            async def gated(m):
                async with gate:
                    return await one_request(client, url, model, m, tokens, extra)

            results = await asyncio.gather(*[gated(m) for m in prompts])
        else:
            gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(prompts))

            async def later(m, at):
                await asyncio.sleep(at)
                return await one_request(client, url, model, m, tokens, extra)

            results = await asyncio.gather(*[later(m, at) for m, at in zip(prompts, np.cumsum(gaps) - gaps[0])])
        wall = time.perf_counter() - t0
    out_tokens = sum(r["tokens"] for r in results)

    def pct(xs, p):
        return round(float(np.percentile(xs, p)) * 1e3, 1) if len(xs) else None

    ttft = [r["ttft"] for r in results]
    tpot = [r["tpot"] for r in results if r["tpot"] is not None]
    itl = [x for r in results for x in r["itl"]]
    return {"concurrency": concurrency, "rate": rate, "requests": len(results), "wall_s": round(wall, 2),
            "requests_per_s": round(len(results) / wall, 3), "output_tokens_per_s": round(out_tokens / wall, 2),
            "ttft_ms_p50": pct(ttft, 50), "ttft_ms_p99": pct(ttft, 99), "tpot_ms_p50": pct(tpot, 50),
            "tpot_ms_p99": pct(tpot, 99), "itl_ms_p50": pct(itl, 50), "itl_ms_p99": pct(itl, 99)}


def compiled(url: str) -> int | None:
    """Our server's count of compiled executables (``/stats``), to show nothing compiled while timed."""
    import urllib.request

    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as response:
            return json.loads(response.read()).get("compiled_executables")
    except (OSError, ValueError):
        return None


def sweep(url: str, model: str, args, warm_levels, extra: dict | None = None) -> list[dict]:
    """A warm-up pass over the timed requests at each of ``warm_levels`` (compiling their shapes), then the
    sweep. Every point's prompts are a prefix of ``workload(16, seed)``; ``extra`` goes into every body."""
    points = []
    for c in warm_levels:
        asyncio.run(run_point(url, model, workload(max(4, c, 16 if c == max(warm_levels) else 0), args.seed),
                              args.output_tokens, concurrency=c, extra=extra))
    before = compiled(url)
    for c in args.concurrency:
        p = asyncio.run(run_point(url, model, workload(max(4, c), args.seed), args.output_tokens, concurrency=c,
                                  extra=extra))
        print(json.dumps(p), flush=True)
        points.append(p)
    for r in args.rates:
        p = asyncio.run(run_point(url, model, workload(16, args.seed), args.output_tokens, rate=r, seed=args.seed,
                                  extra=extra))
        print(json.dumps(p), flush=True)
        points.append(p)
    after = compiled(url)
    if before is not None:
        print(f"compiled while timed: {after - before} executables", flush=True)
        points[-1]["compiled_while_timed"] = after - before
    return points


# -- servers --------------------------------------------------------------------------------------


def banned_stops(gguf: str) -> dict:
    """``logit_bias`` that keeps a peer without ``ignore_eos`` from ending a reply: the GGUF's end-of-text
    token and the chat template's end of turn, at -100."""
    from intern_jax.checkpoint.gguf import open_reader

    reader = open_reader(Path(gguf))
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
    ids = {int(reader.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])}
    ids |= {i for i, t in enumerate(tokens) if t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")}
    return {"logit_bias": {str(i): -100 for i in sorted(ids)}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, ready: str = "/health") -> subprocess.Popen:
    """Start a server and wait until ``GET ready`` answers 200 (its stderr goes to a file: a chatty peer
    must not fill a pipe nobody reads)."""
    import tempfile
    import urllib.request

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd[1:3])} exited: {log.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=5) as response:
                if response.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[1]} did not start in 10 minutes")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415  (slow import, only for the figure)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in results.items():
        closed = [p for p in points if p["concurrency"] is not None]
        ax.plot([p["tpot_ms_p50"] for p in closed], [p["output_tokens_per_s"] for p in closed], "o-", label=name)
        for p in closed:
            ax.annotate(f"c={p['concurrency']}", (p["tpot_ms_p50"], p["output_tokens_per_s"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("time per output token, p50 (ms)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Serving SmolLM2-135M on CPU: throughput vs latency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict[str, list[dict]]) -> str:
    rows = ["| server | load | requests | req/s | output tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | "
            "ITL p50 / p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for name, points in results.items():
        for p in points:
            load = f"concurrency {p['concurrency']}" if p["concurrency"] is not None else f"{p['rate']} req/s"
            rows.append(f"| {name} | {load} | {p['requests']} | {p['requests_per_s']} | {p['output_tokens_per_s']} | "
                        f"{p['ttft_ms_p50']} / {p['ttft_ms_p99']} | {p['tpot_ms_p50']} / {p['tpot_ms_p99']} | "
                        f"{p['itl_ms_p50']} / {p['itl_ms_p99']} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,16", help="closed-loop points, comma-separated")
    ap.add_argument("--rates", default="2", help="open-loop points in requests/s, comma-separated ('' for none)")
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "serving_bench.png")
    ap.add_argument("--url", help="measure this running OpenAI-compatible server instead of starting ours and the peer")
    ap.add_argument("--model", default="smollm2", help="with --url: the served model's name")
    ap.add_argument("--max-batch-size", type=int, default=16, help="our server's engine slots")
    ap.add_argument("--llama-cpp-python", metavar="PYTHON",
                    help="also measure llama.cpp's server, run by this interpreter (llama-cpp-python[server])")
    ap.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_server:
        plain_server(args.port)
        return 0
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x]
    args.rates = [float(x) for x in args.rates.split(",") if x]
    if not args.concurrency or min(args.concurrency) < 1 or args.output_tokens < 2:
        ap.error("--concurrency needs values >= 1 and --output-tokens >= 2")
    load_before = os.getloadavg()
    results: dict[str, list[dict]] = {}
    if args.url:
        results[args.url] = sweep(args.url.rstrip("/"), args.model, args, args.concurrency)
    else:
        from intern_jax.checkpoint import embedded_model_path

        gguf = str(embedded_model_path())
        port = _free_port()
        ours = start([sys.executable, str(ROOT / "scripts/serve.py"), "--model", gguf, "--port", str(port),
                      "--served-model-name", "smollm2", "--max-batch-size", str(args.max_batch_size),
                      "--max-model-len", "1024", "--no-enable-prefix-caching", "--log-level", "warning",
                      "--warm-up"], port)
        try:  # no prefix cache: the warm-up sends the timed prompts, and the peer has no cache
            results["intern-jax serve.py"] = sweep(f"http://127.0.0.1:{port}/v1", "smollm2", args,
                                                   sorted(args.concurrency, reverse=True))
        finally:
            stop(ours)
        port = _free_port()
        plain = start([sys.executable, __file__, "--plain-server", "--port", str(port)], port)
        try:
            # one request at a time whatever the load: one warm-up pass over the prompts compiles every shape
            results["plain FastAPI + stream_generate"] = sweep(f"http://127.0.0.1:{port}/v1", "smollm2", args,
                                                               [max(args.concurrency)])
        finally:
            stop(plain)
        if args.llama_cpp_python:
            port = _free_port()
            threads = str(os.cpu_count())
            peer = start([args.llama_cpp_python, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                          "--port", str(port), "--n_ctx", "1024", "--n_threads", threads, "--n_threads_batch", threads,
                          "--interrupt_requests", "False", "--model_alias", "smollm2"], port, ready="/v1/models")
            try:  # one request at a time, like the plain endpoint
                results["llama.cpp server (Q4_1)"] = sweep(f"http://127.0.0.1:{port}/v1", "smollm2", args,
                                                           [max(args.concurrency)], extra=banned_stops(gguf))
            finally:
                stop(peer)
    load_after = os.getloadavg()
    print(f"\nmachine: {os.cpu_count()} cores, {cpu_name()}; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(table(results))
    names = list(results)
    if len(names) >= 2:
        top = max(args.concurrency)
        ours, *peers = (next(p["output_tokens_per_s"] for p in results[n] if p["concurrency"] == top) for n in names)
        print(f"\nat concurrency {top}, {names[0]}'s output tok/s is " +
              ", ".join(f"{ours / tps:.2f}x {n}'s" for n, tps in zip(names[1:], peers)))
    plot(results, args.png)
    print(f"figure: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
