"""The model side of evaluation: lm-evaluation-harness's three requests, in process over the one decoder.

A model for evaluation is anything with ``loglikelihood``, ``loglikelihood_rolling``,
``generate_until`` and ``token_count`` (``EvalModel``); tasks build their work from those
requests and never know what answers them. ``DecoderLM`` answers them with a ``Decoder``:
scores from ``Decoder.score`` (a context shared by several continuations, such as a question and
its options, is computed once; the head runs only where a token is scored), generations from the
decoder's batched greedy ``generate``. It writes no scoring or decoding code of its own.

Context / continuation split (as lm-eval's ``HFLM._encode_pair``): trailing spaces of the
context move to the continuation, ``context + continuation`` is encoded whole, the context is
encoded alone; the continuation's tokens are the whole encoding's tokens past the context's token
count, scored after the context's own encoding. Where a tokenizer merges across the boundary
("The cat" + "s") the scored tokens are still exactly lm-eval's.
A request may also give token ids for the context and continuation; they are used as they are.
A context longer than the model's window keeps its last tokens (lm-eval's left truncation).

Stop strings of ``generate_until`` are applied to the decoded text after greedy decoding; greedy
text cut at the first stop string is the text that decoding with that stop string would give.
``RequestCache`` keeps every answer under a hash of (model, request kind, request) in a JSONL
file, so ``--reuse`` reads finished work back instead of recomputing it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from intern_jax.inference import Decoder, SamplingParams, encode_prompt, generate
from intern_jax.inference.generate import default_stop_ids

Tokens = Sequence[int]


class EvalModel(Protocol):
    """What tasks need from a model (lm-evaluation-harness's interface, plus a token count for PPL)."""

    name: str

    def loglikelihood(self, requests: Sequence[tuple]) -> list[tuple[float, bool]]: ...

    def loglikelihood_rolling(self, texts: Sequence) -> list[float]: ...

    def generate_until(self, requests: Sequence[tuple]) -> list[str]: ...

    def token_count(self, text: str) -> int: ...


def request_key(model: str, kind: str, request) -> str:
    """A stable hash of one request (texts and token ids alike)."""
    blob = json.dumps([model, kind, request], ensure_ascii=False, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


class RequestCache:
    """Answers by request hash, appended to a JSONL file as they are computed; read back when ``reuse``."""

    def __init__(self, path: str | Path | None, reuse: bool = False):
        self.path = Path(path) if path else None
        self.entries: dict[str, object] = {}
        self.hits = 0
        self._lock = threading.Lock()
        if self.path is not None and reuse:
            # the file, and those of the partitions that wrote beside it (<stem>.part-W-of-N.jsonl)
            base = re.sub(r"\.part-\d+-of-\d+$", "", self.path.stem)
            parts = sorted(p for p in self.path.parent.glob(f"{glob.escape(base)}.part-*.jsonl")
                           if re.fullmatch(r"\.part-\d+-of-\d+", p.stem[len(base):]))
            for path in dict.fromkeys([self.path.parent / f"{base}.jsonl", self.path, *parts]):
                if not path.is_file():
                    continue
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:  # a line cut short by a kill: recomputed
                            continue
                        self.entries[row["key"]] = row["value"]

    def get(self, key: str):
        value = self.entries.get(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, items: dict[str, object]) -> None:
        self.entries.update(items)
        if self.path is None or not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            for key, value in items.items():
                f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")


class TokenizedLM:
    """The tokenization every model for evaluation shares: lm-eval's context / continuation split over a
    tokenizer (``self.tokenizer``; ``None``: requests must come as token ids)."""

    name: str = "model"
    tokenizer = None

    def _tok(self):
        if self.tokenizer is None:
            raise ValueError(f"model {self.name} has no tokenizer; give requests as token ids")
        return self.tokenizer

    @property
    def prefix_ids(self) -> list[int]:
        """What an empty context becomes, and what starts a rolling window: BOS, or EOS where there is none."""
        tok = self._tok()
        token = tok.bos_id if tok.bos_id is not None else tok.eos_id
        return [] if token is None else [token]

    def encode(self, text: str) -> list[int]:
        tok = self._tok()
        return tok.encode(text, add_bos=bool(getattr(tok, "add_bos_token", False)))

    def token_count(self, text: str) -> int:
        return len(self._tok().encode(text))

    def encode_pair(self, context, continuation) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation), split at the boundary the way lm-eval splits it."""
        if not isinstance(context, str) or not isinstance(continuation, str):
            context_ids = list(map(int, context)) if not isinstance(context, str) else self.encode(context)
            cont_ids = list(map(int, continuation)) if not isinstance(continuation, str) \
                else self._tok().encode(continuation)
            return context_ids or self.prefix_ids, cont_ids
        if context == "":
            return self.prefix_ids, self._tok().encode(continuation)
        context, continuation = move_trailing_spaces(context, continuation)
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids):]

    def rolling_ids(self, text) -> list[int]:
        """The tokens a rolling log-likelihood scores (after the first): the prefix token, then the text's."""
        return self.prefix_ids + self._tok().encode(text) if isinstance(text, str) else list(map(int, text))


def move_trailing_spaces(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's rule: trailing spaces of the context belong to the continuation."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    return context, continuation


class DecoderLM(TokenizedLM):
    """``EvalModel`` over a ``Decoder`` (or a loaded model). ``batch_size`` sequences per forward
    (scoring and generation); ``cache`` (a ``RequestCache``) answers repeated requests."""

    def __init__(self, model, name: str = "model", *, batch_size: int = 16, cache: RequestCache | None = None,
                 max_length: int = 0):
        self.decoder = Decoder.from_model(model)
        self.tokenizer = self.decoder.tokenizer
        self.name = name
        self.batch_size = max(1, int(batch_size))
        self.cache = cache or RequestCache(None)
        self.max_length = max_length or self.decoder.config.max_position_embeddings

    # -- the three requests ----------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[tuple]) -> list[tuple[float, bool]]:
        """``[(context, continuation)]`` (text or token ids) -> ``[(sum log p(continuation | context), is_greedy)]``."""
        keys = [request_key(self.name, "loglikelihood", [c, x]) for c, x in requests]
        out: list = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        sequences, starts = [], []
        for i in todo:
            context, cont = self.encode_pair(*requests[i])
            if not cont:
                raise ValueError(f"loglikelihood request {i}: the continuation is empty after tokenization")
            if len(cont) > self.max_length - 1:
                raise ValueError(f"loglikelihood request {i}: continuation of {len(cont)} tokens does not fit the "
                                 f"model's window of {self.max_length} tokens")
            whole = (context + cont)[-self.max_length:]
            sequences.append(whole)
            starts.append(len(whole) - len(cont))
        scored = self._score(sequences, starts)
        fresh = {}
        for i, (logprobs, greedy) in zip(todo, scored):
            out[i] = [float(np.sum(logprobs, dtype=np.float64)), bool(np.all(greedy))]
            fresh[keys[i]] = out[i]
        self.cache.put(fresh)
        return [(float(v[0]), bool(v[1])) for v in out]

    def loglikelihood_rolling(self, texts: Sequence) -> list[float]:
        """Sum of log p over every token of each text (after the prefix token), in windows of the model's
        context where it is longer (each window conditioned on the tokens just before it)."""
        keys = [request_key(self.name, "loglikelihood_rolling", t) for t in texts]
        out: list = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        sequences, starts, owner = [], [], []
        for i in todo:
            ids = self.rolling_ids(texts[i])
            if len(ids) < 2:
                raise ValueError(f"loglikelihood_rolling request {i}: needs at least one token after the prefix")
            done = 1
            while done < len(ids):
                end = min(len(ids), done + self.max_length - 1)
                begin = max(0, end - self.max_length)
                sequences.append(ids[begin:end])
                starts.append(done - begin)
                owner.append(i)
                done = end
        totals = {i: 0.0 for i in todo}
        for i, (logprobs, _) in zip(owner, self._score(sequences, starts)):
            totals[i] += float(np.sum(logprobs, dtype=np.float64))
        fresh = {keys[i]: totals[i] for i in todo}
        for i in todo:
            out[i] = totals[i]
        self.cache.put(fresh)
        return [float(v) for v in out]

    def generate_until(self, requests: Sequence[tuple]) -> list[str]:
        """``[(prompt, stop strings, max_tokens[, {"temperature", "seed"}])]`` -> text, cut before the first
        stop string: greedy, or sampled at the request's temperature with its seed.

        ``prompt``: text, chat messages (``[{"role", "content"}]``, the chat template applied) or token ids.
        """
        keys = [request_key(self.name, "generate_until", list(r)) for r in requests]
        out: list = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        tok = self._tok()
        stop_ids = set(default_stop_ids(tok))
        prompts = {}
        for i in todo:
            prompt = requests[i][0]
            if isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict)):
                prompt = encode_prompt(tok, prompt)
            prompts[i] = list(map(int, prompt))
        order = sorted(todo, key=lambda i: -len(prompts[i]))
        for lo in range(0, len(order), self.batch_size):
            chunk = order[lo: lo + self.batch_size]
            budget = max(int(requests[i][2]) for i in chunk)
            context = self.decoder.config.max_position_embeddings
            rows = [prompts[i][-max(1, context - budget - 1):] for i in chunk]
            sampling = [SamplingParams(temperature=float(_sampling(requests[i]).get("temperature", 0.0)),
                                       seed=int(_sampling(requests[i]).get("seed", 0)),
                                       max_new_tokens=int(requests[i][2]), stop_ids=tuple(sorted(stop_ids)))
                        for i in chunk]
            result = generate(self.decoder, rows, sampling)
            fresh = {}
            for i, tokens in zip(chunk, result.tokens):
                text = tok.decode([t for t in tokens if t not in stop_ids])
                out[i] = cut_at_stop(text, requests[i][1])
                fresh[keys[i]] = out[i]
            self.cache.put(fresh)
        return list(out)

    # -- the one scorer --------------------------------------------------------------------

    def _score(self, sequences, starts):
        """``Decoder.score`` over every request at once (it groups them by context and batches them,
        ``batch_size`` continuations per forward); results in the given order."""
        if not sequences:  # everything answered from the cache
            return []
        return self.decoder.score(sequences, starts, batch_size=self.batch_size)


def _sampling(request) -> dict:
    """A generation request's sampling settings (its optional fourth element; none: greedy)."""
    return request[3] if len(request) > 3 and request[3] else {}


def cut_at_stop(text: str, stops) -> str:
    """``text`` up to the earliest of the stop strings (not included)."""
    stops = [stops] if isinstance(stops, str) else list(stops or ())
    cut = min((text.find(s) for s in stops if s and s in text), default=len(text))
    return text[:cut]
