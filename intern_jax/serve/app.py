"""The OpenAI-compatible HTTP server: a thin FastAPI layer over the serving ``Engine``.

``create_app(engine, served_model_name)`` translates OpenAI requests into ``engine.submit`` calls and the
engine's ``Increment``s into OpenAI responses, whole or streamed as server-sent events. Every generated
token is scheduled by the engine; prompt log-probabilities (``/v1/completions`` with ``echo``) come
from the decoder's ``score``. A client that goes away aborts its request, freeing its slot and pages.
Errors are OpenAI error objects naming the field. ``n`` > 1 runs n engine requests over the same prompt
(choice ``i`` seeded ``seed + i``; the prefix cache shares the prompt's pages once they are computed).
Tools (``tools.py``) go to the model in its own format and come back as ``tool_calls``;
``response_format`` and forced tool calls are grammars (``structured.py``) the engine enforces with a
token mask. Fields the sampler cannot honour (``logit_bias``) are refused with a 400, never ignored. This
module holds no model code and no scheduling.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import Headers

from intern_jax.inference.generate import encode_prompt
from intern_jax.inference.sampling import SamplingError, SamplingParams, per_row
from intern_jax.serve import tools as tooling
from intern_jax.serve.engine import Engine, Increment
from intern_jax.serve.protocol import ChatCompletionRequest, CompletionRequest
from intern_jax.serve.streams import drain, merged, sse
from intern_jax.serve.structured import Grammars
from intern_jax.serve.web import router as web_router

MAX_BODY_BYTES = 4 << 20
_MIN_LOGPROB = -9999.0  # JSON has no -inf
_DISCONNECT_POLL_S = 0.25  # how often a request waiting for its first token checks that its client is there


class APIError(Exception):
    """An error returned to the client as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, *, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def create_app(engine: Engine, served_model_name: str, api_keys: Sequence[str] | None = None,
               max_queue: int = 256, max_body_bytes: int = MAX_BODY_BYTES, tool_call_parser: str = "auto") -> FastAPI:
    """The app over a (started or not) ``engine``. ``api_keys``: when given, ``/v1/*`` needs
    ``Authorization: Bearer <key>`` with one of them. ``max_queue``: requests that may wait beyond the
    engine's running batch before new ones get 429. ``tool_call_parser``: the tool-call format the model
    speaks, ``hermes``, ``internlm2`` or ``auto`` (from its chat template)."""
    server = _Server(engine, served_model_name, max_queue, tool_call_parser)
    keys = [k for k in (api_keys or ()) if k]
    app = FastAPI(title="intern-jax", description="OpenAI-compatible API over the intern-jax serving engine")
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return e.response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error",
                        code="internal_error").response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError):
        return _validation_error(e.errors()).response()

    app.add_middleware(_Guard, server=server, keys=keys, max_body_bytes=max_body_bytes)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/stats")
    async def stats():
        return server.stats()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return server.metrics()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served_model_name, "object": "model", "created": server.created,
                                            "owned_by": "intern-jax", "max_model_len": engine.max_model_len}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await server.chat(body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await server.complete(body, request)

    app.include_router(web_router)  # the web chat page at /, its files at /static/*
    engine.start()
    return app


class _Guard:
    """ASGI middleware for ``/v1/*``: the body-size limit (413), the API key (401), responses counted by status.
    (Plain ASGI, not ``BaseHTTPMiddleware``, so that handlers still see the client disconnect.)"""

    def __init__(self, app, server: _Server, keys: Sequence[str], max_body_bytes: int):
        self.app, self.server, self.keys, self.max_body_bytes = app, server, keys, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        error = None
        if length.isdigit() and int(length) > self.max_body_bytes:
            error = APIError(413, f"request body of {length} bytes is over the limit of {self.max_body_bytes} bytes",
                             code="request_too_large")
        elif self.keys and not _authorized(headers.get("authorization", ""), self.keys):
            error = APIError(401, "missing or wrong API key; send 'Authorization: Bearer <key>'",
                             type="authentication_error", code="invalid_api_key")

        async def counted(message):
            if message["type"] == "http.response.start":
                self.server.statuses[message["status"]] += 1
            await send(message)

        if error is not None:
            return await error.response()(scope, receive, counted)
        await self.app(scope, receive, counted)


class _Server:
    def __init__(self, engine: Engine, name: str, max_queue: int, tool_call_parser: str = "auto"):
        if engine.tokenizer is None:
            raise ValueError("the HTTP server needs a model with a tokenizer")
        self.engine, self.name, self.max_queue = engine, name, max_queue
        self.tokenizer = engine.tokenizer
        self.protocol = tooling.tool_protocol(tool_call_parser, self.tokenizer.chat_template)
        self.grammars = Grammars(self.tokenizer, engine.decoder.config.vocab_size)
        self.created = int(time.time())
        self.in_flight = 0
        self.statuses: Counter = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0

    # -- requests into the engine --------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model != self.name:
            raise APIError(404, f"model {model!r} is not served here; this server serves {self.name!r}",
                           "model", code="model_not_found")

    def _sampling(self, body, max_tokens: int | None) -> SamplingParams:
        refused = [("logit_bias", bool(body.logit_bias), "is not supported")]
        for field, bad, why in refused:
            if bad:
                raise APIError(400, f"{field}: {why}", field)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if not all(stop):
            raise APIError(400, "stop: stop strings must be non-empty", "stop")
        seed = body.seed if body.seed is not None else (secrets.randbits(32) if body.temperature > 0 else 0)
        try:
            return SamplingParams(temperature=body.temperature, top_k=max(body.top_k, 0), top_p=body.top_p,
                                  repetition_penalty=body.repetition_penalty, seed=seed, min_p=body.min_p,
                                  presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                                  max_new_tokens=self.engine.max_model_len if max_tokens is None else max_tokens,
                                  stop=tuple(stop))
        except SamplingError as e:
            field = "max_tokens" if e.field == "max_new_tokens" else e.field
            raise APIError(400, f"{field}: {e.detail}", field) from None

    async def _open(self, request_id: str, prompt, sampling: SamplingParams, rename: dict, request: Request,
                    **options):
        """Submit to the engine; ``(first increment, the rest)``. Engine validation errors become 400s. A
        client that goes away before the first increment (its request still queued, say) cancels the
        request there and then, so it never takes a slot or pages."""
        if self.in_flight >= self.engine.config.max_batch_size + self.max_queue:
            raise APIError(429, f"the server's queue is full ({self.max_queue} waiting requests); retry later",
                           type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
        stream = self._increments(request_id, prompt, sampling, **options)
        first = asyncio.ensure_future(stream.__anext__())
        try:
            while not first.done():
                await asyncio.wait({first}, timeout=_DISCONNECT_POLL_S)
                if not first.done() and await request.is_disconnected():
                    raise APIError(499, "the client closed the request", code="client_closed")
            return first.result(), stream
        except ValueError as e:
            raise _field_error(e, rename) from None
        finally:
            if not first.done():  # cancelling it closes engine.submit, which aborts the (queued) request
                first.cancel()
                await asyncio.gather(first, return_exceptions=True)
                await stream.aclose()

    async def _increments(self, request_id: str, prompt, sampling, **options) -> AsyncIterator[Increment]:
        """The engine's increments for one request. Closing this early (the client went away) closes
        ``engine.submit``, which aborts the request: its slot and pages are freed at the next step."""
        self.in_flight += 1
        try:
            async for inc in self.engine.submit(prompt, sampling, request_id=request_id, **options):
                if inc.finished:
                    self.prompt_tokens += inc.prompt_tokens
                    self.completion_tokens += inc.completion_tokens
                yield inc
        finally:
            self.in_flight -= 1

    async def _open_all(self, requests: Sequence[tuple], rename: dict, request: Request, **options) -> list:
        """Open ``(request_id, prompt, sampling, per-request options)`` engine requests together; if one is
        refused (or the client goes away), close the others and raise its error."""
        opened = await asyncio.gather(*[self._open(rid, p, smp, rename, request, **options, **extra)
                                        for rid, p, smp, extra in requests], return_exceptions=True)
        failed = [r for r in opened if isinstance(r, BaseException)]
        if failed:
            for r in opened:
                if not isinstance(r, BaseException):
                    await r[1].aclose()
            raise failed[0]
        return opened

    # -- /v1/chat/completions ------------------------------------------------------------------

    async def chat(self, body: ChatCompletionRequest, request: Request):
        self._check_model(body.model)
        if body.top_logprobs and not body.logprobs:
            raise APIError(400, "top_logprobs: needs logprobs=true", "top_logprobs")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise APIError(400, f"max_tokens: must be >= 1, got {max_tokens}", "max_tokens")
        try:
            tools = tooling.check_tools(body.tools)
            mode, names = tooling.check_tool_choice(body.tool_choice, tools)
            raw = [{"role": m.role, "content": _text_content(m.content, i), "tool_calls": m.tool_calls,
                    "tool_call_id": m.tool_call_id, "name": m.name} for i, m in enumerate(body.messages)]
            text = tooling.render_prompt(self.tokenizer, raw, tools if mode != "none" else [], self.protocol)
        except ValueError as e:
            raise _field_error(e, {}) from None
        except Exception as e:  # noqa: BLE001 - the template refused the conversation (a jinja error)
            raise APIError(400, f"messages: the chat template cannot render them: {e}", "messages") from None
        prompt = self.tokenizer.encode(text, add_bos=False)  # as encode_prompt: the template writes any BOS
        sampling = self._sampling(body, max_tokens)
        if mode != "none" and self.protocol.stop:
            sampling = dataclasses.replace(sampling, stop=tuple(dict.fromkeys(sampling.stop + self.protocol.stop)))
        grammar = await self._chat_grammar(body, mode, names, tools)
        top = body.top_logprobs or 0 if body.logprobs else 0
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        extra = [{"constraint": self.grammars.constraint(grammar)} if grammar else {} for _ in range(body.n)]
        runs = await self._open_all([(f"{rid}-{i}", prompt, s, extra[i]) for i, s in
                                     enumerate(per_row(sampling, body.n))], {"prompt": "messages"}, request,
                                    top_logprobs=top, ignore_eos=body.ignore_eos)
        calls = tooling.ToolCalls(self.protocol, [t["function"]["name"] for t in tools], forced=mode == "required") \
            if mode != "none" else None
        created = int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return sse(self._chat_events(rid, created, runs, body.logprobs, usage, calls))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, run in enumerate(runs):
            incs = await drain(request, *run)
            if incs is None:
                for _, stream in runs[i + 1:]:
                    await stream.aclose()
                return Response(status_code=499)
            final = _final(incs)
            text = "".join(x.text for x in incs)
            message, finish_reason = {"role": "assistant", "content": text}, final.finish_reason
            if calls is not None:
                content, tool_calls = tooling.parse_reply(text, self.protocol, calls.names)
                if tool_calls:
                    message, finish_reason = {"role": "assistant", "content": content,
                                              "tool_calls": tool_calls}, "tool_calls"
            logprobs = {"content": self._logprob_entries(incs)} if body.logprobs else None
            choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish_reason})
            prompt_tokens = final.prompt_tokens  # one prompt, counted once (as OpenAI counts n > 1)
            completion_tokens += final.completion_tokens
        return {"id": rid, "object": "chat.completion", "created": created, "model": self.name,
                "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}

    async def _chat_grammar(self, body: ChatCompletionRequest, mode: str, names: list[str], tools) -> str | None:
        """The grammar a chat request's tokens must follow: a forced tool call, a JSON response, or none."""
        fmt = body.response_format or {"type": "text"}
        kind = fmt.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise APIError(400, f"response_format.type: 'text', 'json_object' or 'json_schema', got {kind!r}",
                           "response_format.type")
        if kind != "text" and mode == "required":
            raise APIError(400, "response_format: a JSON response cannot be combined with a forced tool call "
                                "(tool_choice 'required' or a named function)", "response_format")
        try:
            if mode == "required":
                chosen = [t for t in tools if t["function"]["name"] in names]
                parallel = body.parallel_tool_calls and body.tool_choice == "required"  # a named function: once
                return await asyncio.to_thread(self.grammars.tool_calls, chosen, self.protocol.name, parallel)
            if kind == "json_object":
                return await asyncio.to_thread(self.grammars.json_object)
            if kind == "json_schema":
                spec = fmt.get("json_schema")
                if not isinstance(spec, dict) or "schema" not in spec:
                    raise ValueError("response_format.json_schema: an object with 'name' and 'schema' is required")
                return await asyncio.to_thread(self.grammars.json_schema, spec["schema"])
        except ValueError as e:
            raise _field_error(e, {}) from None
        return None

    async def _chat_events(self, rid, created, runs, logprobs: bool, include_usage: bool,
                           calls: tooling.ToolCalls | None):
        def chunk(index, delta, finish_reason=None, lps=None, choices=True, usage=None):
            out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.name,
                   "choices": [{"index": index, "delta": delta, "logprobs": lps, "finish_reason": finish_reason}]
                   if choices else []}
            if include_usage:
                out["usage"] = usage
            return out

        splitters = [calls.stream() if calls else None for _ in runs]
        prompt_tokens = completion_tokens = 0
        for i in range(len(runs)):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for i, inc in merged(runs):
            split = splitters[i]
            if inc.token_ids or inc.text:
                lps = {"content": self._logprob_entries([inc])} if logprobs else None
                text, deltas = split.push(inc.text) if split else (inc.text, [])
                if text or lps:
                    yield chunk(i, {"content": text}, lps=lps)
                for delta in deltas:  # a call's name as soon as it is read, then its arguments piece by piece
                    yield chunk(i, {"tool_calls": [delta]})
            if inc.finished:
                if inc.finish_reason == "error":
                    yield _error_body(inc.error)
                    return
                reason = inc.finish_reason
                if split:
                    rest, deltas = split.finish()
                    if rest:
                        yield chunk(i, {"content": rest})
                    for delta in deltas:
                        yield chunk(i, {"tool_calls": [delta]})
                    reason = "tool_calls" if split.calls else reason
                yield chunk(i, {}, finish_reason=reason)
                prompt_tokens = inc.prompt_tokens
                completion_tokens += inc.completion_tokens
        if include_usage:
            yield chunk(None, None, choices=False, usage=_usage(prompt_tokens, completion_tokens))

    def _logprob_entries(self, incs: Sequence[Increment]) -> list[dict]:
        out = []
        for inc in incs:
            tops = inc.top_logprobs or [[]] * len(inc.token_ids)
            for token, lp, alternatives in zip(inc.token_ids, inc.logprobs, tops):
                entry = self._token_entry(token, lp)
                entry["top_logprobs"] = [self._token_entry(t, x) for t, x in alternatives]
                out.append(entry)
        return out

    def _token_entry(self, token: int, logprob: float) -> dict:
        text = self._token_text(token)
        return {"token": text, "logprob": _lp(logprob), "bytes": list(text.encode("utf-8"))}

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([int(token)])

    # -- /v1/completions -----------------------------------------------------------------------

    async def complete(self, body: CompletionRequest, request: Request):
        self._check_model(body.model)
        if body.suffix:
            raise APIError(400, "suffix: is not supported", "suffix")
        if body.best_of not in (None, 1):
            raise APIError(400, "best_of: only 1 is supported", "best_of")
        prompts = _prompt_list(body.prompt)
        if body.max_tokens == 0 and not body.echo:
            raise APIError(400, "max_tokens: must be >= 1 (0 only with echo=true, to score the prompt)", "max_tokens")
        sampling = self._sampling(body, body.max_tokens if body.max_tokens != 0 else 1)
        ids = [encode_prompt(self.tokenizer, p) if isinstance(p, str) else p for p in prompts]
        texts = [p if isinstance(p, str) else self.tokenizer.decode(p) for p in prompts]
        n = body.n  # choice k * n + j is sample j (seed + j) of prompt k
        ids, texts = [p for p in ids for _ in range(n)], [t for t in texts for _ in range(n)]
        samplings = [s for _ in prompts for s in per_row(sampling, n)]
        top = body.logprobs or 0
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.max_tokens == 0:  # score only: the prompt's log-probabilities, no generation
            for p in ids:
                self._check_prompt(p)
            runs = [None] * len(ids)
        else:
            runs = await self._open_all([(f"{rid}-{i}", p, samplings[i], {}) for i, p in enumerate(ids)],
                                        {"top_logprobs": "logprobs"}, request, top_logprobs=top,
                                        ignore_eos=body.ignore_eos)
        scores = await self._score(ids) if body.echo and body.logprobs is not None else [None] * len(ids)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return sse(self._completion_events(rid, created, ids, texts, runs, scores, n, body, usage))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, (p, text, run, score) in enumerate(zip(ids, texts, runs, scores)):
            incs = []
            if run is not None:
                incs = await drain(request, *run)
                if incs is None:
                    for _, stream in runs[i + 1:]:
                        await stream.aclose()
                    return Response(status_code=499)
            final = _final(incs) if incs else None
            out_text = "".join(x.text for x in incs)
            logprobs = None
            if body.logprobs is not None:
                logprobs = self._completion_logprobs(p if body.echo else [], score, incs)
            choices.append({"index": i, "text": (text if body.echo else "") + out_text, "logprobs": logprobs,
                            "finish_reason": final.finish_reason if final else "length"})
            prompt_tokens += len(p) if i % n == 0 else 0  # each prompt counted once, however many choices
            completion_tokens += final.completion_tokens if final else 0
        return {"id": rid, "object": "text_completion", "created": created, "model": self.name, "choices": choices,
                "usage": _usage(prompt_tokens, completion_tokens)}

    async def _completion_events(self, rid, created, ids, texts, runs, scores, n: int, body, include_usage: bool):
        """Every choice's chunks (``index`` k * n + j: sample j of prompt k), interleaved as they come."""
        def chunk(index, text, logprobs=None, finish_reason=None, choices=True, usage=None):
            out = {"id": rid, "object": "text_completion", "created": created, "model": self.name,
                   "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]
                   if choices else []}
            if include_usage:
                out["usage"] = usage
            return out

        want = body.logprobs is not None
        prompt_tokens = sum(len(p) for p in ids[::n])  # each prompt counted once, however many choices
        offsets = [len(t) if body.echo else 0 for t in texts]
        if body.echo:
            for i, (p, text, score) in enumerate(zip(ids, texts, scores)):
                yield chunk(i, text, self._completion_logprobs(p, score, []) if want else None)
        if runs[0] is None:  # score only
            for i in range(len(ids)):
                yield chunk(i, "", finish_reason="length")
            if include_usage:
                yield chunk(None, "", choices=False, usage=_usage(prompt_tokens, 0))
            return
        completion_tokens = 0
        async for i, inc in merged(runs):
            if inc.token_ids or inc.text:
                lps = self._completion_logprobs([], None, [inc], offsets[i]) if want else None
                offsets[i] += len(inc.text)
                yield chunk(i, inc.text, lps)
            if inc.finished:
                if inc.finish_reason == "error":
                    yield _error_body(inc.error)
                    return
                yield chunk(i, "", finish_reason=inc.finish_reason)
                completion_tokens += inc.completion_tokens
        if include_usage:
            yield chunk(None, "", choices=False, usage=_usage(prompt_tokens, completion_tokens))

    def _check_prompt(self, ids: list[int]) -> None:
        vocab = self.engine.decoder.config.vocab_size
        if not ids:
            raise APIError(400, "prompt: empty; a request needs at least one token", "prompt")
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt: token ids outside the vocabulary [0, {vocab})", "prompt")
        if len(ids) > self.engine.max_model_len:
            raise APIError(400, f"prompt: {len(ids)} tokens, but the context is {self.engine.max_model_len} tokens",
                           "prompt")

    async def _score(self, ids: list[list[int]]) -> list:
        """Each prompt's per-token log-probabilities (from its second token on), from the decoder."""
        for p in ids:
            self._check_prompt(p)
        return await asyncio.to_thread(self.engine.decoder.score, ids, [1] * len(ids))

    def _completion_logprobs(self, prompt: list[int], score, incs: Sequence[Increment], offset: int = 0) -> dict:
        """The legacy completions ``logprobs`` object over the echoed prompt (if any) and the generated tokens.
        The prompt's first token has no log-probability; prompt positions carry no alternatives."""
        tokens, lps, tops = [], [], []
        for i, t in enumerate(prompt):
            tokens.append(t)
            lps.append(None if i == 0 or score is None else _lp(float(score[0][i - 1])))
            tops.append(None)
        for inc in incs:
            alternatives = inc.top_logprobs or [None] * len(inc.token_ids)
            for t, lp, alt in zip(inc.token_ids, inc.logprobs, alternatives):
                tokens.append(t)
                lps.append(_lp(lp))
                tops.append({self._token_text(a): _lp(x) for a, x in alt} if alt else None)
        texts = [self._token_text(t) for t in tokens]
        offsets = []
        for s in texts:
            offsets.append(offset)
            offset += len(s)
        return {"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    # -- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict:
        return {**self.engine.stats(), "requests_in_flight": self.in_flight,
                "responses": {str(k): v for k, v in sorted(self.statuses.items())},
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    def metrics(self) -> str:
        """The stats in Prometheus' text format (gauges and counters named ``intern_jax_*``)."""
        s = self.engine.stats()
        lines = []
        for name, kind, value in [("requests_running", "gauge", s["running"]),
                                  ("requests_waiting", "gauge", s["waiting"]),
                                  ("requests_in_flight", "gauge", self.in_flight),
                                  ("kv_blocks_free", "gauge", s["free_blocks"]),
                                  ("kv_blocks_total", "gauge", s["total_blocks"]),
                                  ("prefix_cache_hit_rate", "gauge", s["prefix_hit_rate"]),
                                  ("preemptions_total", "counter", s["preempted"]),
                                  ("prompt_tokens_total", "counter", self.prompt_tokens),
                                  ("generation_tokens_total", "counter", self.completion_tokens)]:
            lines += [f"# TYPE intern_jax_{name} {kind}", f"intern_jax_{name} {value}"]
        lines.append("# TYPE intern_jax_responses_total counter")
        lines += [f'intern_jax_responses_total{{status="{k}"}} {v}' for k, v in sorted(self.statuses.items())]
        return "\n".join(lines) + "\n"


# -- helpers -------------------------------------------------------------------------------------


def _final(incs: Sequence[Increment]) -> Increment:
    final = incs[-1]
    if final.finish_reason == "error":
        raise APIError(500, f"generation failed: {final.error}", type="server_error", code="generation_failed")
    return final


def _error_body(message: str | None) -> dict:
    return {"error": {"message": f"generation failed: {message}", "type": "server_error", "param": None,
                      "code": "generation_failed"}}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _lp(x: float) -> float:
    return max(float(x), _MIN_LOGPROB)


def _text_content(content, index: int) -> str:
    """A message's content as text: a string, or the text parts of a content list."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, f"messages.{index}.content: only text parts are supported, got "
                                f"{part.get('type')!r}", f"messages.{index}.content")
        parts.append(part["text"])
    return "".join(parts)


def _prompt_list(prompt) -> list:
    """``prompt`` as a list of prompts, each a string or a list of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt: empty; give a string, a list of strings or token ids", "prompt")
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return list(prompt)


def _field_error(e: ValueError, rename: dict) -> APIError:
    """A ``ValueError`` whose message starts with ``field:`` (the engine's and the sampler's style) as a 400."""
    message = str(e)
    head, sep, rest = message.partition(":")
    if sep and head and all(part.isidentifier() or part.isdigit() for part in head.split(".")):
        field = rename.get(head, head)
        return APIError(400, f"{field}:{rest}", field)
    return APIError(400, message)


def _validation_error(errors: Sequence[dict]) -> APIError:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip())
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    return APIError(400, f"{param or 'body'}: {first.get('msg', 'invalid value')}", param)


def _authorized(header: str, keys: Sequence[str]) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return any(hmac.compare_digest(token.strip().encode(), k.encode()) for k in keys)
