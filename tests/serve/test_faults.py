"""Load and faults on the session's real server: 64 concurrent streamed chat requests of mixed prompt and
answer lengths, a quarter of whose clients hang up at random points. Every request that runs to the end
gives the greedy answer that request gets alone (the engine with nothing else running; a difference is
allowed only at a near-tie of the two best logits, as in the engine's own test), the others see no error,
every KV page is free afterwards and ``/health`` still answers."""

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.inference import SamplingParams, encode_prompt
from intern_jax.model import internlm2

pytestmark = pytest.mark.slow

MODEL, KEY = "smollm2", "test-key"  # as in conftest.py
SYSTEM = ("You are a careful assistant for a museum of natural history. Answer in one short sentence and "
          "never invent opening hours or prices. ") * 2
TOPICS = ["whales", "volcanoes", "the moon", "bees", "glaciers", "fossils", "comets", "rivers"]
REQUESTS, DISTINCT, HANG_UPS = 64, 8, 16
LIMIT = 300  # seconds for the whole load, generous for a loaded 2-core machine that compiles new batch shapes


def _conversations() -> list[tuple[list[dict], int]]:
    """DISTINCT (messages, max_tokens) pairs: short and long prompts (some sharing a long system prompt),
    answers of 4 to 11 tokens; each is sent REQUESTS / DISTINCT times."""
    out = []
    for i in range(DISTINCT):
        topic = TOPICS[i % len(TOPICS)]
        user = {"role": "user", "content": f"Tell me one fact about {topic}." + " Please." * (i % 5)}
        messages = [{"role": "system", "content": SYSTEM}, user] if i % 3 == 0 else [user]
        out.append((messages, 4 + i))
    return out


@partial(jax.jit, static_argnames=("cfg",))
def _logits(params, tokens, cfg):
    return internlm2.forward(params, {"tokens": tokens}, cfg)[0]


def _top2_gap(model, ids) -> float:
    """The gap between the two best logits after ``ids`` (a full forward, no cache)."""
    padded = np.zeros((1, 256), np.int32)
    padded[0, : len(ids)] = ids
    top2 = np.sort(np.asarray(_logits(model.params, jnp.asarray(padded), model.config))[0, len(ids) - 1])[-2:]
    return float(top2[1] - top2[0])


def _stream(port: int, messages: list[dict], max_tokens: int, hang_up_after: int | None) -> dict:
    """One streamed request; with ``hang_up_after`` the client closes its socket after that many events."""
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=LIMIT)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    out = {"status": response.status, "events": []}
    if response.status != 200:
        out["body"] = response.read().decode()
        conn.close()
        return out
    while True:
        if hang_up_after is not None and len(out["events"]) >= hang_up_after:
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
            out["hung_up"] = True
            return out
        line = response.fp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            data = line[6:].strip().decode()
            out["events"].append(data)
            if data == "[DONE]":
                break
    conn.close()
    return out


def test_64_concurrent_streams_with_a_quarter_hanging_up_give_the_greedy_answers_and_free_every_page(
        server, smollm2, rng):
    conversations = _conversations()
    tokenizer = server.decoder.tokenizer
    # the reference: each conversation alone on the engine (nothing else runs: the server is idle)
    server.idle()
    alone = []
    for messages, max_tokens in conversations:
        alone.append(server.engine.generate([encode_prompt(tokenizer, messages)],
                                            SamplingParams(max_new_tokens=max_tokens))[0])
    jobs = [i % DISTINCT for i in range(REQUESTS)]
    rng.shuffle(jobs)
    hang_ups = set(rng.choice(REQUESTS, HANG_UPS, replace=False).tolist())
    # a hang-up after 0 (right after the headers) to a few events: before, during or at the end of the answer
    after = {k: int(rng.integers(0, conversations[jobs[k]][1] + 2)) for k in hang_ups}
    state = server.app.state.server
    max_queue = state.max_queue
    state.max_queue = REQUESTS  # all 64 wait in the queue rather than some getting 429
    try:
        start = time.monotonic()
        with ThreadPoolExecutor(REQUESTS) as pool:
            results = list(pool.map(lambda k: _stream(server.port, *conversations[jobs[k]], after.get(k)),
                                    range(REQUESTS), timeout=LIMIT))
        elapsed = time.monotonic() - start
    finally:
        state.max_queue = max_queue
    stats = server.idle(timeout=30)  # every KV page back in the pool, nothing running or waiting
    assert stats["free_blocks"] == stats["total_blocks"]
    assert server.raw("GET", "/health")[:2] == (200, {"status": "ok"})

    finished = 0
    for k, result in enumerate(results):
        assert result["status"] == 200, result
        chunks = [json.loads(e) for e in result["events"] if e != "[DONE]"]
        assert not any("error" in c for c in chunks), chunks
        if result.get("hung_up") and (not result["events"] or result["events"][-1] != "[DONE]"):
            continue
        finished += 1
        assert result["events"][-1] == "[DONE]"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        reasons = [c["choices"][0]["finish_reason"] for c in chunks
                   if c["choices"] and c["choices"][0]["finish_reason"]]
        i = jobs[k]
        want = alone[i]
        if text == want.text:
            assert reasons == [want.finish_reason]
            continue
        # allowed only where the two best tokens nearly tie: find where the texts part
        prompt = encode_prompt(tokenizer, conversations[i][0])
        j = next(n for n in range(len(want.token_ids) + 1)
                 if n == len(want.token_ids) or not text.startswith(tokenizer.decode(want.token_ids[: n + 1])))
        gap = _top2_gap(smollm2, prompt + want.token_ids[:j])
        assert gap < 1e-3, f"request {k} (conversation {i}) differs at token {j}, top-2 gap {gap:.2e}: " \
                           f"{text!r} vs {want.text!r}"
    assert finished >= REQUESTS - HANG_UPS
    assert elapsed < LIMIT, f"64 short requests took {elapsed:.0f} s"


def test_a_queued_request_whose_client_hangs_up_is_cancelled_without_taking_a_slot(server):
    """The engine full (its 8 slots running long answers), one more request waits in the queue; its
    client hangs up: the request leaves the queue while the 8 still run, so it was never admitted (no
    slot, no pages, no prefill)."""
    server.idle()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    slots = server.engine.config.max_batch_size
    fills = []
    try:
        conversations = _conversations()  # the load test's: their shapes are compiled, their prompts cached
        for k in range(slots):  # sent together, so that one step prefills them all
            body = {"model": MODEL, "messages": conversations[k % len(conversations)][0],
                    "max_tokens": 900, "temperature": 0, "ignore_eos": True, "stream": True}
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=LIMIT)
            conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
            fills.append(conn)
        for conn in fills:  # each answers at its first token: all 8 are running
            assert conn.getresponse().status == 200
        queued = http.client.HTTPConnection("127.0.0.1", server.port, timeout=LIMIT)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "I wait in the queue."}], "max_tokens": 4}
        queued.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        deadline = time.monotonic() + 120  # generous: a loaded machine may be compiling a new shape
        while (before := server.raw("GET", "/stats")[1])["waiting"] != 1:
            assert time.monotonic() < deadline, before
            time.sleep(0.05)
        assert before["running"] == slots
        queued.sock.shutdown(socket.SHUT_RDWR)
        queued.close()
        deadline = time.monotonic() + 60
        while (after := server.raw("GET", "/stats")[1])["waiting"] != 0:
            assert time.monotonic() < deadline, f"the hung-up request is still queued: {after}"
            time.sleep(0.05)
        # gone from the queue while every slot is still busy with the first 8: never admitted, never prefilled
        assert after["running"] == slots and after["prefilled_tokens"] == before["prefilled_tokens"]
        assert after["requests_in_flight"] == slots and after["responses"].get("499", 0) >= 1
    finally:
        for conn in fills:
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
    server.idle()
