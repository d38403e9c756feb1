"""The HTTP server on the embedded SmolLM2: a real uvicorn server on loopback, driven by the official
``openai`` client (and raw HTTP for what a client library would not send). Greedy answers equal
``generate_text``'s, usage counts are exact, prompt log-probabilities equal the decoder's ``score``,
errors are OpenAI error objects naming the field, and a client that goes away frees its pages."""

import http.client
import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest

from intern_jax.inference import SamplingParams, encode_prompt
from intern_jax.inference.generate import generate_text

pytestmark = pytest.mark.slow

MODEL = "smollm2"  # as in conftest.py
KEY = "test-key"
MAX_MODEL_LEN = 1024
CHAT = [{"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three colors of the rainbow."}]


def _raw(server, method: str, path: str, body=None, headers=None, timeout: float = 60):
    return server.raw(method, path, body, headers, timeout)


def _idle(server, timeout: float = 15) -> dict:
    return server.idle(timeout)


def _greedy(server, messages, **sampling):
    return generate_text(server.decoder, messages, SamplingParams(**sampling))


def test_models_health_and_stats(server):
    assert [m.id for m in server.client.models.list().data] == [MODEL]
    assert _raw(server, "GET", "/health")[:2] == (200, {"status": "ok"})
    status, text, _ = _raw(server, "GET", "/metrics")
    assert status == 200 and "intern_jax_kv_blocks_total 40" in text


def test_chat_greedy_equals_generate_text_plain_and_streamed_with_exact_usage(server):
    want, result = _greedy(server, CHAT, max_new_tokens=16)
    prompt_tokens = len(encode_prompt(server.decoder.tokenizer, CHAT))
    got = server.client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=16)
    assert got.choices[0].message.content == want
    assert got.choices[0].finish_reason == result.finish_reasons[0]
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (prompt_tokens, len(result.tokens[0]))
    assert got.usage.total_tokens == prompt_tokens + len(result.tokens[0])

    chunks = list(server.client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0,
                                                        max_completion_tokens=16, stream=True,
                                                        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        result.finish_reasons[0]]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(result.tokens[0])
    assert chunks[-1].usage.prompt_tokens == prompt_tokens


def test_stop_string_ends_the_text_before_it(server):
    full, _ = _greedy(server, CHAT, max_new_tokens=16)
    stop = full.split()[2]  # a word in the middle of the greedy answer
    want, result = _greedy(server, CHAT, max_new_tokens=16, stop=(stop,))
    assert want == full[: full.index(stop)]
    got = server.client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=16,
                                                stop=[stop, "no such text"])
    assert got.choices[0].message.content == want and got.choices[0].finish_reason == "stop"
    assert got.usage.completion_tokens == len(result.tokens[0])


def test_penalties_and_min_p_reach_the_sampler(server):
    """presence/frequency penalties and min_p give what generate_text gives with the same settings and seed."""
    knobs = dict(presence_penalty=1.5, frequency_penalty=2.0, min_p=0.2)
    want, _ = _greedy(server, CHAT, max_new_tokens=12, temperature=1.0, seed=7, **knobs)
    plain, _ = _greedy(server, CHAT, max_new_tokens=12, temperature=1.0, seed=7)
    got = server.client.chat.completions.create(model=MODEL, messages=CHAT, temperature=1.0, max_tokens=12, seed=7,
                                                presence_penalty=1.5, frequency_penalty=2.0,
                                                extra_body={"min_p": 0.2})
    assert got.choices[0].message.content == want
    assert want != plain  # the knobs really change this sample


def test_a_seed_fixes_the_sample_and_sampling_without_one_varies(server):
    def sample(**extra):
        return server.client.chat.completions.create(model=MODEL, messages=CHAT, temperature=1.0, top_p=0.95,
                                                     max_tokens=6, **extra).choices[0].message.content

    first = sample(seed=7)
    assert sample(seed=7) == first
    assert len({first, sample(seed=8), sample()}) > 1


def test_chat_logprobs_and_top_logprobs_match_generate(server):
    want, result = _greedy(server, CHAT, max_new_tokens=8)
    got = server.client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=8,
                                                logprobs=True, top_logprobs=3)
    content = got.choices[0].logprobs.content
    assert len(content) == got.usage.completion_tokens == len(result.tokens[0])
    tok = server.decoder.tokenizer
    assert [e.token for e in content] == [tok.decode([t]) for t in result.tokens[0]]
    np.testing.assert_allclose([e.logprob for e in content], result.logprobs[0], atol=2e-3)
    for e in content:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-5)  # greedy: the best is the choice


def test_completions_echo_logprobs_equal_decoder_score(server):
    prompt = "The capital of France is Paris. The capital of Italy is"
    tok = server.decoder.tokenizer
    ids = encode_prompt(tok, prompt)
    (want, greedy), = server.decoder.score([ids], [1])
    got = server.client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    lp = got.choices[0].logprobs
    assert got.choices[0].text == prompt and lp.token_logprobs[0] is None and len(lp.tokens) == len(ids)
    np.testing.assert_allclose(lp.token_logprobs[1:], want, rtol=0, atol=1e-6)
    assert got.usage.prompt_tokens == len(ids) and got.usage.completion_tokens == 0

    # token ids in, echo plus four generated tokens: the prompt part is the same, and the generated tokens'
    # log-probabilities are the decoder's scores of the whole sequence, each the greedy choice
    got = server.client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0, echo=True,
                                           logprobs=2, extra_body={"ignore_eos": True})
    lp = got.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 4 == len(ids) + got.usage.completion_tokens
    assert got.choices[0].text.startswith(tok.decode(ids))
    np.testing.assert_allclose(lp.token_logprobs[1: len(ids)], want, rtol=0, atol=1e-6)
    generated = server.engine.generate([ids], SamplingParams(max_new_tokens=4), ignore_eos=True)[0].token_ids
    assert lp.tokens[len(ids):] == [tok.decode([t]) for t in generated]
    (scores, greedy), = server.decoder.score([ids + generated], [len(ids)])
    np.testing.assert_allclose(lp.token_logprobs[len(ids):], scores, atol=2e-3)
    assert greedy.all()
    assert all(len(t) == 2 and max(t.values()) == pytest.approx(x, abs=1e-5)
               for t, x in zip(lp.top_logprobs[len(ids):], lp.token_logprobs[len(ids):]))


def test_streamed_completions_with_n_equal_the_whole_response(server):
    # choice j is sample j (seed + j), streamed interleaved; each index's chunks add up to that choice of
    # the same request not streamed: text, log-probabilities with their text offsets, finish reason, usage
    prompt = "The capital of France is"
    kw = dict(model=MODEL, prompt=prompt, n=2, max_tokens=6, temperature=0.9, seed=11, logprobs=1)
    client = server.client.with_options(timeout=600)  # a loaded machine may be compiling a new batch shape
    whole = client.completions.create(**kw)
    assert [c.index for c in whole.choices] == [0, 1]
    texts, lps, offsets, reasons, usage = {}, {}, {}, {}, None
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.logprobs is not None:
                lps.setdefault(c.index, []).extend(c.logprobs.token_logprobs)
                offsets.setdefault(c.index, []).extend(c.logprobs.text_offset)
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert sorted(texts) == [0, 1]
    for c in whole.choices:
        assert (texts[c.index], reasons[c.index]) == (c.text, c.finish_reason)
        assert offsets[c.index] == c.logprobs.text_offset
        np.testing.assert_allclose(lps[c.index], c.logprobs.token_logprobs, atol=2e-3)
    assert whole.usage.prompt_tokens == len(encode_prompt(server.decoder.tokenizer, prompt))
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)
    _idle(server)


def test_eight_concurrent_requests_all_succeed_and_free_every_page(server):
    questions = [f"Give one fact about the number {i}." for i in range(8)]

    def ask(q):
        return server.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}],
                                                     temperature=0, max_tokens=12, timeout=300)

    with ThreadPoolExecutor(8) as pool:  # bounded, but generous: a loaded machine may be compiling new shapes
        answers = list(pool.map(ask, questions, timeout=400))
    for a in answers:
        assert a.choices[0].finish_reason in ("stop", "length") and a.usage.completion_tokens >= 1
    # the same question alone gives the same answer (greedy; batch mates do not change it)
    alone = server.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": questions[3]}],
                                                  temperature=0, max_tokens=12)
    assert alone.choices[0].message.content == answers[3].choices[0].message.content
    # a list of prompts: one choice each, in order, run side by side
    both = server.client.completions.create(model=MODEL, prompt=[questions[0], questions[0] + " Briefly."],
                                            max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in both.choices] == [0, 1] and both.usage.completion_tokens == 10
    _idle(server)


@pytest.mark.parametrize("change, status, param", [
    ({"model": "gpt-4"}, 404, "model"),
    ({"messages": []}, 400, "messages"),
    ({"temperature": -0.5}, 400, "temperature"),
    ({"n": 0}, 400, "n"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"presence_penalty": 2.5}, 400, "presence_penalty"),
    ({"min_p": 1.0}, 400, "min_p"),
    ({"top_p": 0}, 400, "top_p"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ({"logprobs": True, "top_logprobs": 5}, 400, "top_logprobs"),  # the engine keeps 3 alternatives
    ({"tools": [{"type": "code_interpreter"}]}, 400, "tools.0.type"),
    ({"messages": [{"role": "user", "content": "word " * 1100}]}, 400, "messages"),
])
def test_bad_requests_are_openai_errors_naming_the_field(server, change, status, param):
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 4, **change}
    got, error, _ = _raw(server, "POST", "/v1/chat/completions", body)
    assert got == status, error
    assert set(error["error"]) == {"message", "type", "param", "code"} and error["error"]["param"] == param
    assert param.split(".")[0] in error["error"]["message"]


def test_prompt_over_the_context_names_both_lengths(server):
    got, error, _ = _raw(server, "POST", "/v1/completions", {"model": MODEL, "prompt": [1] * 1500, "max_tokens": 2})
    assert got == 400 and "1500" in error["error"]["message"] and str(MAX_MODEL_LEN) in error["error"]["message"]


def test_wrong_key_malformed_json_and_huge_bodies_are_refused_and_the_server_keeps_serving(server):
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 2}
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        got, error, _ = _raw(server, "POST", "/v1/chat/completions", body, headers=headers)
        assert got == 401 and error["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(server.client.base_url), api_key="nope", max_retries=0).models.list()
    got, error, _ = _raw(server, "POST", "/v1/chat/completions", b'{"model": "smollm2", "messages": [')
    assert got == 400 and "JSON" in error["error"]["message"]
    got, error, _ = _raw(server, "POST", "/v1/chat/completions", {**body, "max_tokens": "many"})
    assert got == 400 and error["error"]["param"] == "max_tokens"
    got, error, _ = _raw(server, "POST", "/v1/completions", b"x" * (5 << 20))
    assert got == 413 and error["error"]["code"] == "request_too_large"
    assert server.client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2).usage.completion_tokens


def test_a_full_queue_is_429_with_retry_after(server):
    state = server.app.state.server
    full = server.engine.config.max_batch_size + state.max_queue
    state.in_flight += full  # as if that many requests were running and waiting
    try:
        got, error, headers = _raw(server, "POST", "/v1/chat/completions", {"model": MODEL, "messages": CHAT})
    finally:
        state.in_flight -= full
    assert got == 429 and headers["Retry-After"] == "1" and error["error"]["code"] == "queue_full"


def test_client_disconnect_aborts_the_request_and_frees_its_pages(server):
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 600, "temperature": 0, "ignore_eos": True,
            "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    events = 0
    while events < 4:  # a few streamed tokens, then hang up
        line = response.fp.readline()
        events += line.startswith(b"data: ")
    mid = _raw(server, "GET", "/stats")[1]
    assert mid["running"] == 1 and mid["free_blocks"] < mid["total_blocks"]
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    stats = _idle(server)
    assert stats["generated_tokens"] - mid["generated_tokens"] < 400  # stopped long before its 600 tokens

    # not streamed: the client gives up waiting
    with pytest.raises(TimeoutError):
        _raw(server, "POST", "/v1/chat/completions", {**body, "stream": False}, timeout=1.5)
    _idle(server)


def test_serve_script_help_and_bad_flags_are_one_line_errors(tmp_path):
    script = str(Path(__file__).parents[2] / "scripts" / "serve.py")
    done = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--max-queue" in done.stdout and "--enable-prefix-caching" in done.stdout
    assert "--chat-template" in done.stdout and "--tool-call-parser" in done.stdout and "--tp" in done.stdout
    template = tmp_path / "broken.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}")  # the for block is never closed
    for flags, message in ((["--max-batch-size", "0"], "--max-batch-size must be >= 1"),
                           (["--port", "70000"], "--port must be in [1, 65535]"),
                           (["--api-keys", "/no/such/keys"], "/no/such/keys: no such file"),
                           (["--tp", "0"], "--tp must be >= 1"),
                           (["--chat-template", str(template)], "not a valid Jinja template")):
        done = subprocess.run([sys.executable, script, "--model", "/no/such/model", *flags], capture_output=True,
                              text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("serve.py: error: "), done.stderr
        assert message in lines[0]
    done = subprocess.run([sys.executable, script, "--model", "m", "--tool-call-parser", "react"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--tool-call-parser: invalid choice: 'react'" in done.stderr
