"""EndpointLM against the session's real server over loopback: the same scores, predictions and metrics as the
in-process DecoderLM over the same decoder; retries on a flaky endpoint; a clear error when none answers."""

import dataclasses
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from intern_jax.eval import DecoderLM, RequestCache
from intern_jax.eval.config import find_datasets
from intern_jax.eval.endpoint import EndpointError, EndpointLM
from intern_jax.eval.run import evaluate_dataset
from intern_jax.testing import JSONHandler

from ..conftest import SERVER_KEY, SERVER_MODEL

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "eval"


def close(a: float, b: float, rel: float = 1e-3) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def endpoint(server, **kw) -> EndpointLM:
    return EndpointLM(f"http://127.0.0.1:{server.port}/v1", api_key=SERVER_KEY, **kw)


@pytest.mark.slow
def test_loglikelihood_and_ppl_over_http_equal_the_in_process_numbers(server):
    local = DecoderLM(server.decoder, "local", batch_size=8)
    remote = endpoint(server, batch_size=4)
    assert remote.served_model == SERVER_MODEL and remote.name == SERVER_MODEL
    mc, ppl = find_datasets("arith_mc,commonsense_mc", CONFIG_DIR)
    # log-likelihood, prompts sent as text: the continuation found by the returned offsets
    want, want_records = evaluate_dataset(local, mc, limit=8)
    got, got_records = evaluate_dataset(remote, mc, limit=8)
    assert got["metrics"] == want["metrics"]
    for w, g in zip(want_records, got_records):
        assert all(close(a, b) for a, b in zip(w["loglikelihoods"], g["loglikelihoods"])), (w, g)
        assert (w["prediction"], w["prediction_norm"]) == (g["prediction"], g["prediction_norm"])
    # PPL, prompts sent as token ids split by the local tokenizer: the prefix token is scored too
    with_tokenizer = endpoint(server, tokenizer=server.decoder.tokenizer)
    want, want_records = evaluate_dataset(local, ppl, limit=6)
    got, got_records = evaluate_dataset(with_tokenizer, ppl, limit=6)
    assert got["metrics"] == want["metrics"]
    for w, g in zip(want_records, got_records):
        assert all(close(a, b) for a, b in zip(w["perplexities"], g["perplexities"])), (w, g)
    server.idle()


@pytest.mark.slow
def test_greedy_generations_over_http_equal_the_in_process_ones_text_and_chat(server):
    local = DecoderLM(server.decoder, "local", batch_size=8)
    remote = endpoint(server)
    # 4 items, text and chat prompts of one length bucket: one compile, the one the script's test makes too
    (qa,) = find_datasets("arith_qa", CONFIG_DIR)
    for cfg in (qa, dataclasses.replace(qa, prompt=dataclasses.replace(qa.prompt, chat=True))):
        want, want_records = evaluate_dataset(local, cfg, limit=4)
        got, got_records = evaluate_dataset(remote, cfg, limit=4)
        assert [r["output"] for r in got_records] == [r["output"] for r in want_records]
        assert got["metrics"] == want["metrics"]
    server.idle()


class _Flaky(JSONHandler):
    """Answers 503 to the first ``fail`` requests, then one fixed completion."""

    fail = 2
    seen = 0

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen += 1
        if type(self).seen <= type(self).fail:
            self.send_json(503, {"error": {"message": "overloaded"}})
        else:
            self.send_json(200, {"choices": [{"index": 0, "text": " 42\n\nmore"}]})


def test_a_flaky_endpoint_is_retried_with_backoff_and_an_unreachable_one_ends_in_a_clear_error(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        cache = RequestCache(tmp_path / "cache.jsonl")
        lm = EndpointLM(f"http://127.0.0.1:{httpd.server_port}/v1", served_model="m", backoff=0.01, cache=cache)
        assert lm.generate_until([("Q:", ["\n\n"], 8)]) == [" 42"]
        assert _Flaky.seen == 3
    finally:
        httpd.shutdown()
    # the answer was kept: a new client with --reuse over a dead endpoint still has it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    reused = EndpointLM(f"http://127.0.0.1:{dead}/v1", served_model="m", backoff=0.01, retries=2,
                        cache=RequestCache(tmp_path / "cache.jsonl", reuse=True))
    assert reused.generate_until([("Q:", ["\n\n"], 8)]) == [" 42"]
    with pytest.raises(EndpointError, match=rf"127.0.0.1:{dead}/v1/completions failed after 3 tries"):
        reused.generate_until([("another", ["\n"], 8)])
    with pytest.raises(ValueError, match="base URL"):
        EndpointLM("127.0.0.1:8000", served_model="m")


@pytest.mark.slow
def test_evaluate_script_takes_an_endpoint_url(server, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(CONFIG_DIR.parents[1] / "scripts"))
    try:
        import evaluate
    finally:
        sys.path.pop(0)
    argv = ["--url", f"http://127.0.0.1:{server.port}/v1", "--api-key", SERVER_KEY, "--datasets", "arith_mc",
            "--limit", "3", "--output", str(tmp_path), "--json"]
    assert evaluate.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["models"] == [SERVER_MODEL] and printed["results"][0]["num_items"] == 3
    assert (tmp_path / "predictions" / SERVER_MODEL / "arith_mc.jsonl").is_file()
    assert (tmp_path / "summary.png").is_file()
    # a wrong key is a clear one-line error, not a retry loop
    assert evaluate.main([*argv[:3], "wrong", *argv[4:]]) == 2
    assert "answered 401" in capsys.readouterr().err


class _NoZero(JSONHandler):
    """Refuses max_tokens 0 (as some servers do); with 1, echoes the prompt's tokens and one generated token."""

    bodies = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        if body["max_tokens"] == 0:
            status, reply = 400, {"error": {"message": "max_tokens: must be >= 1"}}
        else:  # prompt "Q: x yes": tokens Q | : | " x" | " yes", then the generated " no"
            status = 200
            lp = {"tokens": ["Q", ":", " x", " yes", " no"], "token_logprobs": [None, -1.0, -2.0, -3.0, -9.0],
                  "text_offset": [0, 1, 2, 4, 8], "top_logprobs": [None, None, None, {" yes": -3.0}, {" no": -9.0}]}
            reply = {"choices": [{"index": 0, "text": "Q: x yes no", "logprobs": lp}]}
        self.send_json(status, reply)


def test_a_server_that_refuses_max_tokens_0_is_asked_with_1_and_the_generated_token_is_dropped():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoZero)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        lm = EndpointLM(f"http://127.0.0.1:{httpd.server_port}/v1", served_model="m", backoff=0.01)
        # the context's trailing space moves to the continuation; the continuation is " yes" (offset 4)
        assert lm.loglikelihood([("Q: x ", "yes")]) == [(-3.0, True)]
        assert [b["max_tokens"] for b in _NoZero.bodies] == [0, 1]
        assert _NoZero.bodies[-1]["prompt"] == ["Q: x yes"] and _NoZero.bodies[-1]["echo"] is True
        # rolling: every prompt token that has a log-probability, not the generated one
        assert lm.loglikelihood_rolling(["Q: x yes"]) == [-6.0] and lm.token_count("Q: x yes") == 3
    finally:
        httpd.shutdown()
