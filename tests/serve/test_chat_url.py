"""``scripts/chat.py --url`` against the session's real server, as a user runs it (a subprocess on stdin):
each streamed reply equals the greedy answer the API gives (official ``openai`` client, not streamed) for
the whole conversation so far, /reset starts over, and a wrong key or no server is one line and exit status 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key"  # as in conftest.py
SYSTEM = "You are a concise assistant."
Q1, Q2 = "Name three colors.", "And one more?"
TOKENS = 8


def _chat(port: int, *args, stdin: str):
    env = {**{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "scripts/chat.py"), "--url", f"http://127.0.0.1:{port}/v1",
                           *args], input=stdin, capture_output=True, text=True, timeout=240, env=env)
    return done.returncode, done.stdout, done.stderr


def test_chat_url_streams_each_turn_equal_to_the_api_greedy_answer_and_reset_starts_over(server):
    def greedy(messages):
        return server.client.chat.completions.create(model="smollm2", messages=messages, temperature=0,
                                                     max_tokens=TOKENS).choices[0].message.content

    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1}]
    want1 = greedy(turn1)
    want2 = greedy([*turn1, {"role": "assistant", "content": want1}, {"role": "user", "content": Q2}])
    code, out, err = _chat(server.port, "--api-key", KEY, "--system", SYSTEM, "--max-new-tokens", str(TOKENS),
                           "--stats", stdin=f"{Q1}\n{Q2}\n/reset\n{Q1}\n/quit\n")
    assert code == 0, err
    assert out == f"you> assistant> {want1}\nyou> assistant> {want2}\nyou> you> assistant> {want1}\nyou> "
    assert err.count("generated, ") == 3 and "tok/s]" in err
    server.idle()


def test_chat_url_wrong_key_and_no_server_are_one_line_errors(server):
    code, out, err = _chat(server.port, "--api-key", "wrong", stdin="hi\n")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "HTTP 401" in lines[0] and "API key" in lines[0], err
    code, out, err = _chat(1, stdin="hi\n")
    assert code == 2 and "is the server running?" in err and "Traceback" not in err
