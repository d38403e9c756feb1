"""``EndpointLM``: the evaluation requests answered by any OpenAI-compatible endpoint over HTTP.

The other implementation of ``EvalModel`` beside ``DecoderLM``; tasks cannot tell them apart.

- **Log-likelihood** (and rolling log-likelihood, for PPL): ``/v1/completions`` with ``echo: true``,
  ``logprobs: 1`` and ``max_tokens: 0`` (a server that refuses 0 is asked again with 1, and the
  generated token is dropped by ``usage.prompt_tokens``): the log-probability of every prompt token.
  With a local ``tokenizer`` the prompt goes as token ids, split exactly as ``DecoderLM`` splits it
  (identical scores). Without one it goes as text, ``context + continuation`` (lm-eval's rule: the
  context's trailing spaces move to the continuation), and the continuation is the prompt tokens whose
  ``text_offset`` is at or past the context's length (a token that straddles the boundary stays with the
  context, as in-process; if every continuation character sits in such a token, that token is scored).
  A text prompt's first token has no log-probability, so a rolling log-likelihood in text mode scores the
  tokens after the first, and ``token_count`` counts those.
- ``is_greedy`` is true only where the server returns ``top_logprobs`` for prompt positions and every
  continuation token is the top one; otherwise false (no metric uses it).
- **Generation**: chat messages through ``/v1/chat/completions``, plain text or ids through
  ``/v1/completions``; greedy (``temperature: 0``), the stop strings sent and applied again to the text.
- **Transport**: batches of ``batch_size`` prompts per completions request, at most ``concurrency``
  requests in flight; 429, 5xx and connection failures are retried with exponential backoff, then end
  in an error naming the URL. Answers go to the ``RequestCache`` as each batch finishes, so a failure
  keeps what was done. Plain ``urllib``: no client library.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from intern_jax.eval.model import RequestCache, TokenizedLM, cut_at_stop, move_trailing_spaces, request_key

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class EndpointError(ConnectionError):
    """An endpoint that answered with an error, or could not be reached after every retry (an ``OSError``:
    the command line reports it in one line)."""


class EndpointLM(TokenizedLM):
    """``EvalModel`` over ``url`` (``http://HOST:PORT/v1``). ``served_model``: the model name the server
    knows (default: the first of ``GET /v1/models``); ``name``: the name in the summary (default: the
    served model's); ``tokenizer``: send token ids, split as in process (default: text)."""

    def __init__(self, url: str, name: str | None = None, *, served_model: str | None = None,
                 api_key: str | None = None, tokenizer=None, batch_size: int = 16, concurrency: int = 4,
                 retries: int = 5, backoff: float = 0.5, timeout: float = 300.0, cache: RequestCache | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--url {url!r}: give the API's base URL, e.g. http://127.0.0.1:8000/v1")
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.concurrency = max(1, int(concurrency))
        self.retries, self.backoff, self.timeout = int(retries), float(backoff), float(timeout)
        self.cache = cache or RequestCache(None)
        self.served_model = served_model or self._first_model()
        self.name = name or self.served_model
        self._score_tokens = 0  # max_tokens of a scoring request: 0, or 1 once the server refused 0
        self._counts: dict[str, int] = {}  # text -> tokens scored by its rolling log-likelihood (text mode)

    # -- transport ---------------------------------------------------------------------------

    def _post(self, path: str, body: dict | None = None, method: str = "POST") -> dict:
        """One JSON request, retried with backoff on 429 / 5xx / connection failures."""
        url = self.url + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(30.0, self.backoff * 2 ** (attempt - 1)))
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                message = _error_message(e)
                if e.code not in RETRY_STATUSES:
                    raise EndpointError(f"{url} answered {e.code}: {message}") from None
                last = f"{e.code}: {message}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                last = str(getattr(e, "reason", e))
        raise EndpointError(f"{url} failed after {self.retries + 1} tries (last: {last}); is the server up? "
                            "Answers already received are kept in the cache (--reuse)")

    def _first_model(self) -> str:
        models = self._post("/models", method="GET").get("data") or []
        if not models:
            raise EndpointError(f"{self.url}/models lists no model; give --served-model")
        return str(models[0]["id"])

    def _parallel(self, fn, batches: list) -> list:
        if len(batches) <= 1 or self.concurrency == 1:
            return [fn(b) for b in batches]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, batches))

    # -- prompt scoring ------------------------------------------------------------------------

    def _prompt_logprobs(self, prompts: list) -> list[tuple[list, list, list]]:
        """Each prompt's ``(token_logprobs, text_offset, top_logprobs)`` over its own tokens (first: ``None``)."""
        body = {"model": self.served_model, "prompt": prompts, "echo": True, "logprobs": 1,
                "max_tokens": self._score_tokens, "temperature": 0.0}
        try:
            reply = self._post("/completions", body)
        except EndpointError as e:
            if self._score_tokens == 0 and "max_tokens" in str(e) and " 400" in str(e):
                self._score_tokens = 1
                return self._prompt_logprobs(prompts)
            raise
        choices = sorted(reply.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise EndpointError(f"{self.url}/completions returned {len(choices)} choices for {len(prompts)} prompts")
        out = []
        for prompt, choice in zip(prompts, choices):
            lp = choice.get("logprobs") or {}
            token_lps = lp.get("token_logprobs")
            if token_lps is None:
                raise EndpointError(f"{self.url}/completions returned no token_logprobs with echo=true; this "
                                    "endpoint cannot score prompts (log-likelihood and PPL need it)")
            offsets = lp.get("text_offset") or [0] * len(token_lps)
            tops = lp.get("top_logprobs") or [None] * len(token_lps)
            n = len(token_lps)
            if self._score_tokens:  # drop the generated token(s)
                if isinstance(prompt, list):
                    n = len(prompt)
                else:
                    n = sum(1 for o in offsets if o < len(prompt))
            out.append((token_lps[:n], offsets[:n], tops[:n]))
        return out

    def _scored(self, prompts: list, keys: list[str], finish) -> None:
        """Score ``prompts`` in batches; ``finish(index, answer)`` per prompt; cache puts per batch."""
        batches = [list(range(lo, min(len(prompts), lo + self.batch_size)))
                   for lo in range(0, len(prompts), self.batch_size)]

        def run(batch):
            answers = self._prompt_logprobs([prompts[i] for i in batch])
            fresh = {keys[i]: finish(i, a) for i, a in zip(batch, answers)}
            self.cache.put(fresh)
            return fresh

        self._parallel(run, batches)

    # -- the three requests ----------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[tuple]) -> list[tuple[float, bool]]:
        """``[(context, continuation)]`` -> ``[(sum log p(continuation | context), is_greedy)]``."""
        keys = [request_key(self.name, "loglikelihood", [c, x]) for c, x in requests]
        out: list = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        prompts, boundaries = [], []
        for i in todo:
            context, cont = requests[i]
            if self.tokenizer is not None or not (isinstance(context, str) and isinstance(cont, str)):
                context_ids, cont_ids = self.encode_pair(context, cont)
                if not cont_ids:
                    raise ValueError(f"loglikelihood request {i}: the continuation is empty after tokenization")
                prompts.append(context_ids + cont_ids)
                boundaries.append(("ids", len(context_ids)))
            else:
                context, cont = move_trailing_spaces(context, cont)
                if not cont:
                    raise ValueError(f"loglikelihood request {i}: the continuation is empty")
                prompts.append(context + cont)
                boundaries.append(("text", len(context)))

        def finish(j, answer):
            token_lps, offsets, tops = answer
            kind, at = boundaries[j]
            if kind == "ids":
                picked = list(range(at, len(token_lps)))
            else:
                picked = [t for t, o in enumerate(offsets) if o >= at] or [len(token_lps) - 1]
            if picked[0] == 0 or any(token_lps[t] is None for t in picked):
                raise EndpointError(f"loglikelihood request {todo[j]}: the endpoint gave no log-probability for a "
                                    "continuation token (an empty context?)")
            total = math.fsum(float(token_lps[t]) for t in picked)
            greedy = all(tops[t] and float(token_lps[t]) >= max(map(float, tops[t].values())) - 1e-6
                         for t in picked)
            out[todo[j]] = [total, bool(greedy)]
            return out[todo[j]]

        self._scored(prompts, [keys[i] for i in todo], finish)
        return [(float(v[0]), bool(v[1])) for v in out]

    def loglikelihood_rolling(self, texts: Sequence) -> list[float]:
        """Sum of log p over every prompt token that has one (with a tokenizer: after the prefix token)."""
        keys = [request_key(self.name, "loglikelihood_rolling", t) for t in texts]
        out: list = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        prompts = []
        for i in todo:
            text = texts[i]
            prompts.append(self.rolling_ids(text) if self.tokenizer is not None or not isinstance(text, str)
                           else text)

        def finish(j, answer):
            token_lps = [x for x in answer[0] if x is not None]
            if isinstance(prompts[j], str):
                self._counts[prompts[j]] = len(token_lps)
            if not token_lps:
                raise ValueError(f"loglikelihood_rolling request {todo[j]}: needs at least two tokens")
            out[todo[j]] = math.fsum(map(float, token_lps))
            return out[todo[j]]

        self._scored(prompts, [keys[i] for i in todo], finish)
        return [float(v) for v in out]

    def token_count(self, text: str) -> int:
        """Tokens a rolling log-likelihood of ``text`` scores (what PPL divides by)."""
        if self.tokenizer is not None:
            return super().token_count(text)
        if text not in self._counts:
            self._counts[text] = sum(1 for x in self._prompt_logprobs([text])[0][0] if x is not None)
        return self._counts[text]

    def generate_until(self, requests: Sequence[tuple]) -> list[str]:
        """``[(prompt, stop strings, max_tokens[, {"temperature", "seed"}])]`` -> text (greedy unless the request
        asks to sample), cut before the first stop string. Chat messages go to ``/chat/completions``, text or
        token ids to ``/completions``."""
        keys = [request_key(self.name, "generate_until", list(r)) for r in requests]
        out: list = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]

        def one(i):
            prompt, stops, max_tokens = requests[i][:3]
            sampling = requests[i][3] if len(requests[i]) > 3 else {}
            stops = [stops] if isinstance(stops, str) else [s for s in (stops or ()) if s]
            body = {"model": self.served_model, "max_tokens": int(max_tokens),
                    "temperature": float(sampling.get("temperature", 0.0))}
            if "seed" in sampling:
                body["seed"] = int(sampling["seed"])
            if stops:
                body["stop"] = stops[:4]  # OpenAI's limit; the rest are applied here
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
                reply = self._post("/chat/completions", {**body, "messages": prompt})
                text = (reply["choices"][0].get("message") or {}).get("content") or ""
            else:
                reply = self._post("/completions", {**body, "prompt": prompt if isinstance(prompt, str)
                                                    else list(map(int, prompt))})
                text = reply["choices"][0].get("text") or ""
            out[i] = cut_at_stop(text, stops)
            self.cache.put({keys[i]: out[i]})

        self._parallel(one, todo)
        return list(out)


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read().decode("utf-8", "replace")
    except OSError:
        return e.reason or ""
    try:
        error = json.loads(body).get("error")
        return error.get("message", body) if isinstance(error, dict) else str(error or body)
    except (json.JSONDecodeError, AttributeError):
        return body[:300]
