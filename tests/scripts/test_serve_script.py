"""``scripts/serve.py`` as an operator runs it, on a tiny random model (SmolLM2's tokenizer, quick to load and
compile): SIGTERM drains. New connections are refused at once, the streams in flight run to their last
token and ``[DONE]``, and the process exits with status 0."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOKENS = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream(port: int, out: dict, first: threading.Event):
    """One streamed chat request of TOKENS tokens; records its events and how it ended."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story."}], "stream": True,
            "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        out["status"] = response.status
        out["events"] = []
        for line in response.fp:
            if line.startswith(b"data: "):
                out["events"].append(line[6:].strip().decode())
                first.set()
        conn.close()
    except Exception as e:  # noqa: BLE001  (reported by the test)
        out["error"] = repr(e)
    finally:
        out["ended"] = time.monotonic()
        first.set()


def test_sigterm_refuses_new_connections_finishes_the_streams_in_flight_and_exits_0(tiny_checkpoint):
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/serve.py"), "--model", str(tiny_checkpoint),
                             "--port", str(port), "--max-model-len", "256", "--max-batch-size", "4",
                             "--drain-timeout", "60", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        results = [{} for _ in range(3)]
        started = [threading.Event() for _ in results]
        threads = [threading.Thread(target=_stream, args=(port, r, e)) for r, e in zip(results, started)]
        for t in threads:
            t.start()
        for e in started:
            assert e.wait(120)
        assert all("error" not in r for r in results), results
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # the listener closes at once: a new connection is refused while the streams still run
        refused_at = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < refused_at, "new connections were still accepted after SIGTERM"
            time.sleep(0.05)
        for t in threads:
            t.join(120)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert code == 0, err
    assert "drained and stopped" in err
    assert max(r["ended"] for r in results) > signalled  # a stream was still running when the signal came
    for r in results:
        assert r["status"] == 200 and r["events"][-1] == "[DONE]", r
        chunks = [json.loads(e) for e in r["events"][:-1]]
        assert chunks[-1]["usage"]["completion_tokens"] == TOKENS
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
