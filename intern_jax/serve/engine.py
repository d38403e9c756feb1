"""The serving engine: continuous batching over a paged KV cache, on the one decoder.

``Engine(model, EngineConfig(...))`` owns a ``Decoder``, one paged ``DecodeBatch`` of
``max_batch_size`` slots, a ``BlockPool`` and a ``Scheduler``. Each ``step``: the scheduler picks
the decoding sequences and the prefill chunks that fit the token budget; the batch decodes one
token for every decoding slot, then prefills the chunks (a sequence whose prompt completes
samples its first token there); new tokens are detokenized, checked against stop strings, and
reported as ``Increment``s. Requests join and leave at every step.

Two ways in: ``engine.generate(prompts, sampling)`` for offline batches (like LMDeploy's
``pipeline``), and ``await engine.submit(...)`` + ``engine.abort(id)`` for a server, served by
a background thread started with ``engine.start()``. The engine never runs a model function of
its own: every token comes from the decoder's ``insert`` / ``step``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence

import jax
import numpy as np

from intern_jax.inference.decoder import Decoder, PagedLayout
from intern_jax.inference.generate import default_stop_ids, encode_prompt
from intern_jax.inference.sampling import NO_TOKEN, SamplingParams, bitmask_width, per_row
from intern_jax.inference.stop import StopStrings
from intern_jax.serve.block_pool import BlockPool
from intern_jax.serve.scheduler import Scheduler
from intern_jax.serve.scheduler import Sequence as Seq


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """``num_blocks`` 0 sizes the pool for ``max_batch_size`` sequences of a quarter of ``max_model_len``
    each, unless ``cache_fraction`` (0 < f <= 0.95) sizes it to that share of the memory free once the
    weights are loaded (the device's, or on CPU the host's available memory); ``max_model_len`` 0 is
    the model's context; ``num_top_logprobs`` is the most alternatives a
    request may ask for (one compiled width for all); ``tp`` shards the weights over that many devices
    (the decoder's tensor parallelism; the cache and activations follow)."""

    max_batch_size: int = 64
    max_num_tokens: int = 512
    block_size: int = 64
    num_blocks: int = 0
    max_model_len: int = 0
    enable_prefix_caching: bool = True
    kv_int8: bool = False
    num_top_logprobs: int = 0
    tp: int = 1
    cache_fraction: float = 0.0

    def __post_init__(self):
        if not (0.0 <= self.cache_fraction <= 0.95):  # NaN fails too
            raise ValueError(f"EngineConfig.cache_fraction must be in (0, 0.95] (0: off), got {self.cache_fraction}")
        if self.cache_fraction and self.num_blocks:
            raise ValueError("EngineConfig: set num_blocks or cache_fraction, not both")
        for name in ("max_batch_size", "max_num_tokens", "block_size", "tp"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_blocks", "max_model_len", "num_top_logprobs"):
            if getattr(self, name) < 0:
                raise ValueError(f"EngineConfig.{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass
class Increment:
    """What one request gained in one step (and, when ``finished``, how it ended)."""

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]] | None
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort | error
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclasses.dataclass
class Result:
    request_id: str
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None
    error: str | None = None


@dataclasses.dataclass(eq=False)
class _Request:
    seq: Seq
    stop_ids: frozenset
    stops: StopStrings
    detok: object | None
    top: int
    constraint: object | None = None  # structured.Constraint: the grammar its tokens must follow


class Engine:
    def __init__(self, model, config: EngineConfig = EngineConfig()):
        self.decoder = Decoder.from_model(model, tp=config.tp)
        self.tokenizer = self.decoder.tokenizer
        self.config = config
        context = self.decoder.config.max_position_embeddings
        self.max_model_len = min(config.max_model_len or context, context)
        per_seq = -(-self.max_model_len // config.block_size)
        num_blocks = config.num_blocks or max(per_seq, config.max_batch_size * max(1, per_seq // 4))
        if config.cache_fraction:
            num_blocks = self._blocks_for_fraction(config, per_seq)
        self.pool = BlockPool(num_blocks, config.block_size, prefix_caching=config.enable_prefix_caching)
        self.scheduler = Scheduler(self.pool, max_batch_size=config.max_batch_size,
                                   max_num_tokens=config.max_num_tokens)
        self.batch = self.decoder.new_batch(
            config.max_batch_size, paged=PagedLayout(num_blocks, config.block_size, per_seq),
            kv_int8=config.kv_int8, num_top_logprobs=config.num_top_logprobs)
        self.requests: dict[str, _Request] = {}
        # session id -> (tokens whose keys/values its pages hold, the pages), least recently used first
        self.sessions: collections.OrderedDict[str, tuple[list[int], list[int]]] = collections.OrderedDict()
        self.prefilled_tokens = 0
        self._pending: list[_Request] = []
        self._aborts: set[str] = set()
        self._lock = threading.Lock()  # guards _pending / _aborts (any thread)
        self._step_lock = threading.Lock()  # one step at a time
        self._wake = threading.Condition(self._lock)
        self._sinks: dict = {}  # request id -> callable receiving its increments
        self._thread: threading.Thread | None = None
        self._closed = False
        self.generated_tokens = 0
        self.busy_seconds = 0.0
        self.steps = 0

    def warm_up(self, progress=None) -> int:
        """Compile now the programs a server meets first, so that its first requests do not wait for them:
        the decode step for every power-of-two count of live slots up to ``max_batch_size``, and prefill
        for every power-of-two stream length up to the step budget, of one sequence and of each bucket of
        several (``DecodeBatch.insert_rows``; with packed prefill, the paged default, that is every
        prefill the engine runs). Needs an idle engine that holds nothing (no request, session or cached
        page): it writes throwaway keys and values into free pages. With the persistent compilation cache
        a restarted server reads these programs back. ``progress``: called with ``(done, total)`` after
        each. Returns the number of programs compiled."""
        with self._step_lock:
            busy = self.requests or self.sessions or self._pending or self.scheduler.running or self.scheduler.waiting
            if busy or self.pool.key_of or self.pool.num_free != self.pool.num_blocks:
                raise RuntimeError("Engine.warm_up needs an idle engine holding no request, session or cached page; "
                                   "call it before serving")
            before = self.decoder.num_executables
            batch, vocab = self.batch, self.decoder.config.vocab_size
            longest = min(self.config.max_num_tokens, self.max_model_len - 1)
            lengths = [n for n in (16 << k for k in range(16)) if n < longest] + [longest]
            counts = [w for w in (1 << k for k in range(16)) if w < batch.slots] + [batch.slots]
            # several chunks at once: each row bucket (its largest count that fits the slots) at each length
            groups = sorted({min(batch.insert_rows(n), batch.slots) for n in range(2, batch.slots + 1)})
            prefills = [(1, n) for n in lengths] + [(g, n) for g in groups for n in lengths if n >= g]
            total, done = len(prefills) + len(counts), 0

            def insert(slots, length):  # the first slot takes what the others' one token each leave
                n = len(slots)
                prompts = [[0] * (length - n + 1)] + [[0]] * (n - 1)
                batch.insert(slots, prompts, [SamplingParams(max_new_tokens=2)] * n,
                             allowed=np.full((n, bitmask_width(vocab)), -1, np.int32), generated=[[]] * n)

            for g, length in prefills:
                insert(list(range(g)), length)
                batch.release(list(range(g)))
                done += 1
                if progress:
                    progress(done, total)
            for w in counts:  # every count of live slots
                insert(list(range(w)), w)
                batch.step()
                batch.release(list(range(w)))
                done += 1
                if progress:
                    progress(done, total)
            return self.decoder.num_executables - before

    def _blocks_for_fraction(self, config: EngineConfig, per_seq: int) -> int:
        """Pages filling ``cache_fraction`` of the memory free now (the weights are already resident)."""
        probe = self.decoder.new_batch(1, paged=PagedLayout(1, config.block_size, 1), kv_int8=config.kv_int8)
        page_bytes = sum(x.nbytes for x in (probe.cache.k, probe.cache.v, probe.cache.k_scales, probe.cache.v_scales)
                         if x is not None)
        free, where = free_memory_bytes()
        num_blocks = int(config.cache_fraction * free // page_bytes)
        if num_blocks < per_seq:
            raise ValueError(
                f"cache_fraction={config.cache_fraction}: {config.cache_fraction} x {free / 2**30:.2f} GiB free "
                f"({where}) holds {num_blocks} pages of {config.block_size} tokens, but one sequence of "
                f"max_model_len={self.max_model_len} needs {per_seq}; raise cache_fraction or lower max_model_len")
        return num_blocks

    # -- requests in ---------------------------------------------------------------------------

    def _request(self, prompt, sampling: SamplingParams, request_id: str | None, *, top_logprobs: int = 0,
                 ignore_eos: bool = False, session_id: str | None = None, constraint=None) -> _Request:
        """Validate and wrap one request; a bad one raises ``ValueError`` naming the field."""
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict)):
            if self.tokenizer is None:
                raise ValueError("prompt: text prompts need a model with a tokenizer; pass token ids")
            prompt = encode_prompt(self.tokenizer, prompt)
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("prompt: empty; a request needs at least one token")
        vocab = self.decoder.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise ValueError(f"prompt: token ids outside the vocabulary [0, {vocab})")
        if len(prompt) >= self.max_model_len:
            held = f" (the conversation of session {session_id!r}; end it and start a new one)" if session_id else ""
            raise ValueError(f"prompt: {len(prompt)} tokens{held}, but the engine's context is {self.max_model_len} "
                             "tokens (max_model_len), leaving no room to generate")
        if sampling.max_new_tokens < 1:
            raise ValueError(f"max_tokens: must be >= 1, got {sampling.max_new_tokens}")
        if not 0 <= top_logprobs <= self.config.num_top_logprobs:
            raise ValueError(f"top_logprobs: must be in [0, {self.config.num_top_logprobs}] (the engine's "
                             f"num_top_logprobs), got {top_logprobs}")
        stop_ids = set(sampling.stop_ids)
        if not ignore_eos and self.tokenizer is not None:
            stop_ids |= set(default_stop_ids(self.tokenizer))
        budget = min(sampling.max_new_tokens, self.max_model_len - len(prompt))
        sampling = dataclasses.replace(sampling, max_new_tokens=budget, stop_ids=tuple(sorted(stop_ids)))
        seq = Seq(prompt, sampling) if request_id is None else Seq(prompt, sampling, request_id=request_id)
        seq.session_id = session_id
        if seq.request_id in self.requests:
            raise ValueError(f"request_id: {seq.request_id!r} is already running")
        detok = None
        if self.tokenizer is not None:
            from intern_jax.tokenizer import StreamDecoder

            detok = StreamDecoder(self.tokenizer)
        return _Request(seq, frozenset(stop_ids), StopStrings(sampling.stop), detok, top_logprobs, constraint)

    def add_request(self, prompt, sampling: SamplingParams = SamplingParams(), request_id: str | None = None,
                    sink=None, **options) -> str:
        """Queue a request (text, chat messages or token ids); returns its id. ``sink(increment)`` is called
        with each of its increments (from the thread that runs the step). Options: ``top_logprobs``,
        ``ignore_eos``, ``session_id``, ``constraint`` (a ``structured.Constraint``: every token is drawn
        from its grammar's allowed tokens; the request ends when the grammar completes)."""
        return self._queue(self._request(prompt, sampling, request_id, **options), sink)

    def _queue(self, req: _Request, sink=None) -> str:
        with self._wake:
            if sink is not None:
                self._sinks[req.seq.request_id] = sink
            self._pending.append(req)
            self._wake.notify()
        return req.seq.request_id

    def abort(self, request_id: str) -> None:
        """Stop a request; its pages and slot are freed at the next step. Unknown ids raise ``KeyError``."""
        with self._wake:
            if request_id not in self.requests and all(r.seq.request_id != request_id for r in self._pending):
                raise KeyError(f"no running request {request_id!r}")
            self._aborts.add(request_id)
            self._wake.notify()

    # -- one step ------------------------------------------------------------------------------

    def step(self) -> list[Increment]:
        """Run one scheduling step; the increments of every request that moved."""
        with self._step_lock:
            t0 = time.perf_counter()
            with self._lock:
                pending, self._pending = self._pending, []
                aborts, self._aborts = self._aborts, set()
            out: dict[str, Increment] = {}
            for req in pending:
                self.requests[req.seq.request_id] = req
                self._resume(req.seq)
                self.scheduler.add(req.seq)
            for rid in aborts:
                if rid in self.requests:
                    self._finish(self.requests[rid], out, "abort")
            plan = self.scheduler.schedule()
            if not (plan.prefill or plan.decode) and self.scheduler.waiting and self.sessions:
                self._end(next(iter(self.sessions)))  # idle sessions hold the pages a request waits for
            for seq in plan.failed:
                self._finish(self.requests[seq.request_id], out, "error", error=seq.error, scheduled=False)
            if plan.freed_slots:
                self.batch.release(plan.freed_slots)
            running = [s for s in self.scheduler.running if s.slot is not None]
            if running:
                self.batch.set_block_tables([s.slot for s in running], _tables(running))
            try:
                if plan.decode:
                    result = self.batch.step(self._masks([(s.slot, s) for s in plan.decode], self.batch.slots))
                    for seq in plan.decode:
                        seq.computed += 1
                        self._take(self.requests[seq.request_id], result, seq.slot, out)
                if plan.prefill:
                    self._prefill(plan.prefill, out)
            except Exception as e:  # noqa: BLE001 - a failed step fails its requests, not the engine
                for seq in plan.decode + [c.seq for c in plan.prefill]:
                    if seq.request_id in self.requests:
                        self._finish(self.requests[seq.request_id], out, "error", error=f"{type(e).__name__}: {e}")
            self.steps += 1
            self.busy_seconds += time.perf_counter() - t0
            return list(out.values())

    def _prefill(self, chunks, out) -> None:
        slots, pieces, samplings, keep, history = [], [], [], [], []
        for c in chunks:
            seq = c.seq
            slots.append(seq.slot)
            pieces.append(seq.tokens[c.start: c.end])
            keep.append(c.start)
            history.append(seq.tokens[: c.end])
            # a preempted sequence resumes its budget, penalties and random stream where they were
            samplings.append(seq.sampling if c.last else dataclasses.replace(seq.sampling, max_new_tokens=0))
        # inserts always carry masks (-1 rows: free), so a constrained request compiles no insert of its own
        allowed = self._masks([(i, c.seq) for i, c in enumerate(chunks) if c.last], len(chunks), always=True)
        result = self.batch.insert(slots, pieces, samplings, keep=keep, history=history, allowed=allowed,
                                   generated=[c.seq.output for c in chunks])
        self.prefilled_tokens += sum(len(p) for p in pieces)
        for i, c in enumerate(chunks):
            seq = c.seq
            seq.computed = c.end
            self.pool.register(seq.blocks, seq.tokens[: seq.computed])
            if c.last:
                seq.decoding = True
                self._take(self.requests[seq.request_id], result, i, out)

    def _masks(self, rows, n: int, always: bool = False) -> np.ndarray | None:
        """Allowed-token bitmasks ``[n, ceil(V / 32)]`` for ``(row, seq)`` pairs whose request has a grammar
        (-1 rows: unconstrained); None when none has (unless ``always``), so unconstrained batches run
        the unmasked decode step."""
        constrained = [(row, self.requests[seq.request_id].constraint) for row, seq in rows
                       if self.requests[seq.request_id].constraint is not None]
        if not constrained and not always:
            return None
        masks = np.full((n, bitmask_width(self.decoder.config.vocab_size)), -1, np.int32)
        for row, constraint in constrained:
            constraint.fill(masks[row])
        return masks

    def _take(self, req: _Request, result, row: int, out) -> None:
        """Record the token ``result`` holds for ``req`` at ``row``; finish the request if it is done."""
        seq = req.seq
        try:
            token = int(result.tokens[row])
            inc = out.setdefault(seq.request_id, _increment(req))
            if token == NO_TOKEN:
                self._finish(req, out, "length")
                return
            seq.output.append(token)
            self.generated_tokens += 1
            inc.token_ids.append(token)
            inc.logprobs.append(float(result.logprobs[row]))
            if req.top and result.top_ids is not None:
                inc.top_logprobs.append([(int(i), float(lp)) for i, lp in
                                         zip(result.top_ids[row][: req.top], result.top_logprobs[row][: req.top])])
            if req.detok is not None and token not in req.stop_ids:
                inc.text += req.stops.push(req.detok.push(token))
            complete = False
            if req.constraint is not None and token not in req.stop_ids:
                if not req.constraint.accept(token):
                    self._finish(req, out, "error", error=f"token {token} breaks the request's grammar: "
                                                          f"{req.constraint.error}")
                    return
                complete = req.constraint.finished and not req.stops.stopped
                if complete and req.detok is not None:  # nothing may follow: release what is held back
                    inc.text += req.stops.push(req.detok.flush()) + req.stops.flush()
            if req.stops.stopped or token in req.stop_ids or complete:
                self._finish(req, out, "stop")
            elif len(seq.output) >= seq.sampling.max_new_tokens or len(seq.tokens) >= self.max_model_len:
                self._finish(req, out, "length")
        except Exception as e:  # noqa: BLE001 - one request's failure is reported to it alone
            self._finish(req, out, "error", error=f"{type(e).__name__}: {e}")

    def _finish(self, req: _Request, out, reason: str, *, error: str | None = None, scheduled: bool = True) -> None:
        seq = req.seq
        inc = out.setdefault(seq.request_id, _increment(req))
        if reason in ("length",) and req.detok is not None and not req.stops.stopped:
            inc.text += req.stops.push(req.detok.flush()) + req.stops.flush()
        slot = seq.slot
        keep = seq.session_id is not None and reason in ("stop", "length") and scheduled and seq.decoding
        if keep:  # the session holds the conversation's pages for its next turn
            self.sessions[seq.session_id] = (seq.tokens[: seq.computed], list(seq.blocks))
            self.sessions.move_to_end(seq.session_id)
        if scheduled:
            self.scheduler.finish(seq, keep_blocks=keep)
        if slot is not None:
            self.batch.release([slot])
        seq.finish_reason, seq.error = reason, error
        inc.finished, inc.finish_reason, inc.error = True, reason, error
        inc.completion_tokens = len(seq.output)
        self.requests.pop(seq.request_id, None)

    # -- sessions ------------------------------------------------------------------------------

    def _resume(self, seq: Seq) -> None:
        """A request of a known session starts from the pages of the conversation so far: only what
        differs from it (the new turn) is prefilled."""
        held = self.sessions.pop(seq.session_id, None) if seq.session_id else None
        if held is None:
            return
        tokens, blocks = held
        common = 0
        for a, b in zip(tokens, seq.prompt):
            if a != b:
                break
            common += 1
        common = min(common, len(seq.prompt) - 1)
        bs = self.pool.block_size
        if common % bs and blocks[common // bs] in self.pool.key_of:
            common -= common % bs  # a full page may be shared through the prefix cache: never write into it
        used = self.pool.blocks_for(common)
        self.pool.release(blocks[used:])
        seq.blocks, seq.computed, seq.resumed = blocks[:used], common, True

    def _end(self, session_id: str) -> None:
        _, blocks = self.sessions.pop(session_id)
        self.pool.release(blocks)

    def end_session(self, session_id: str) -> None:
        """Forget a session's conversation and free its pages. An unknown id raises ``KeyError``."""
        with self._step_lock:
            if session_id not in self.sessions:
                raise KeyError(f"no session {session_id!r} (it never finished a turn, or was ended)")
            self._end(session_id)

    # -- offline batches -----------------------------------------------------------------------

    def generate(self, prompts: Sequence, sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
                 **options) -> list[Result]:
        """Run ``prompts`` (text, chat message lists or token ids) to completion; one ``Result`` each, in order.

        ``sampling``: one for all (request ``i`` seeded ``seed + i``) or one per prompt.
        """
        sampling = per_row(sampling, len(prompts))
        results: dict[str, Result] = {}
        all_done = threading.Event()

        def collect(inc: Increment) -> None:
            r = results[inc.request_id]
            r.text += inc.text
            r.token_ids += inc.token_ids
            r.logprobs += inc.logprobs
            if inc.finished:
                r.finish_reason, r.error = inc.finish_reason, inc.error
                if all(x.finish_reason is not None for x in results.values()):
                    all_done.set()

        reqs = [self._request(p, s, None, **options) for p, s in zip(prompts, sampling, strict=True)]  # all valid
        ids = [r.seq.request_id for r in reqs]
        for req, rid in zip(reqs, ids):
            results[rid] = Result(rid, "", [], [], None)
            self._queue(req, collect)
        while not all_done.is_set():
            if self._thread is not None and self._thread.is_alive():
                all_done.wait(timeout=1.0)
            else:
                for inc in self.step():
                    self._dispatch(inc)
        return [results[i] for i in ids]

    # -- serving -------------------------------------------------------------------------------

    def start(self) -> Engine:
        """Run steps on a background thread whenever there is work (for ``submit``)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="intern-jax-engine", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._pending or self._aborts or self.scheduler.has_work()):
                    self._wake.wait()
                if self._closed:
                    return
            try:
                incs = self.step()
            except Exception as e:  # noqa: BLE001 - the loop outlives any one step: fail what was running
                incs = self._fail_all(f"{type(e).__name__}: {e}")
            for inc in incs:
                self._dispatch(inc)

    def _fail_all(self, error: str) -> list[Increment]:
        out: dict[str, Increment] = {}
        with self._step_lock:
            for req in list(self.requests.values()):
                self._finish(req, out, "error", error=error)
        return list(out.values())

    def _dispatch(self, inc: Increment) -> None:
        sink = self._sinks.get(inc.request_id)
        if sink is None:
            return
        if inc.finished:
            self._sinks.pop(inc.request_id, None)
        try:
            sink(inc)
        except Exception:  # noqa: BLE001 - a receiver that is gone (closed event loop): stop its request
            self._sinks.pop(inc.request_id, None)
            if not inc.finished:
                with self._wake:
                    self._aborts.add(inc.request_id)

    async def submit(self, prompt, sampling: SamplingParams = SamplingParams(), request_id: str | None = None,
                     **options) -> AsyncIterator[Increment]:
        """Queue a request and iterate over its increments as the background loop produces them."""
        self.start()
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        rid = self.add_request(prompt, sampling, request_id,
                               sink=lambda inc: loop.call_soon_threadsafe(queue.put_nowait, inc), **options)
        finished = False
        try:
            while not finished:
                inc = await queue.get()
                finished = inc.finished
                yield inc
        finally:
            if not finished:  # the consumer stopped early (closed the iterator, was cancelled): free the request
                self._sinks.pop(rid, None)
                with self._wake:
                    self._aborts.add(rid)
                    self._wake.notify()

    def stats(self) -> dict:
        s = self.scheduler
        return {
            "running": len(s.running),
            "waiting": len(s.waiting),
            "preempted": s.num_preemptions,
            "free_blocks": self.pool.num_free,
            "total_blocks": self.pool.num_blocks,
            "prefix_hit_rate": round(self.pool.hit_rate, 4),
            "sessions": len(self.sessions),
            "prefilled_tokens": self.prefilled_tokens,
            "generated_tokens": self.generated_tokens,
            "tokens_per_s": round(self.generated_tokens / self.busy_seconds, 2) if self.busy_seconds else 0.0,
            "steps": self.steps,
            "compiled_executables": self.decoder.num_executables,
            "evicted_executables": self.decoder.evicted_executables,
        }


def free_memory_bytes() -> tuple[int, str]:
    """Bytes free for the KV cache now, and where: the first device's limit less what is in use when the
    backend reports it (GPU, TPU), else the host's available memory (``MemAvailable``) on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), "device memory"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "host MemAvailable"
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host free pages"


def _increment(req: _Request) -> Increment:
    return Increment(req.seq.request_id, [], "", [], [] if req.top else None, prompt_tokens=len(req.seq.prompt),
                     completion_tokens=len(req.seq.output))


def _tables(seqs) -> np.ndarray:
    width = max(len(s.blocks) for s in seqs)
    tables = np.zeros((len(seqs), max(width, 1)), np.int32)
    for i, s in enumerate(seqs):
        tables[i, : len(s.blocks)] = s.blocks
    return tables
