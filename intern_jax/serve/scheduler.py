"""The scheduler: which sequences run this step, how many of their tokens, and which pages they own.

Plain Python over plain data (no model, no arrays), so it is tested on its own. Each step it
(1) gives every decoding sequence room for one more token, preempting the most recently started
sequences when the pool runs dry (their pages are freed and they are requeued, to be recomputed);
(2) spends the rest of the step's token budget (``max_num_tokens``) on prefill chunks: first of
sequences already part-way through their prompt, then of waiting ones, oldest first, while a slot
is free. A long prompt is thus prefilled over several steps while running streams keep
decoding (chunked prefill). A sequence that could not fit even alone in the whole pool fails
with a clear error instead of waiting forever. The engine runs what ``schedule`` returns.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools

from intern_jax.inference.sampling import SamplingParams
from intern_jax.serve.block_pool import BlockPool

_ids = itertools.count()


@dataclasses.dataclass(eq=False)
class Sequence:
    """One request's tokens and their place in the cache.

    ``tokens`` is the prompt followed by the generated tokens; ``computed`` of them have their
    keys and values in the sequence's ``blocks``.
    """

    prompt: list[int]
    sampling: SamplingParams
    request_id: str = dataclasses.field(default_factory=lambda: f"req-{next(_ids)}")
    output: list[int] = dataclasses.field(default_factory=list)
    blocks: list[int] = dataclasses.field(default_factory=list)
    computed: int = 0
    slot: int | None = None
    decoding: bool = False  # every token it holds is computed but the last (fed at the next step)
    preemptions: int = 0
    finish_reason: str | None = None
    error: str | None = None
    session_id: str | None = None
    resumed: bool = False  # its first ``computed`` tokens' pages came from its session, not the prefix cache

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def prefilling(self) -> bool:
        """Still computing the tokens it holds (its prompt, or prompt + output after a preemption)."""
        return not self.decoding


@dataclasses.dataclass
class Chunk:
    """Prefill ``seq.tokens[start:end]`` this step; ``last`` when that completes what it holds."""

    seq: Sequence
    start: int
    end: int

    @property
    def last(self) -> bool:
        return self.end == len(self.seq.tokens)


@dataclasses.dataclass
class Plan:
    prefill: list[Chunk]
    decode: list[Sequence]
    preempted: list[Sequence]
    failed: list[Sequence]
    freed_slots: list[int]  # slots whose sequences were preempted: stop decoding them


class Scheduler:
    def __init__(self, pool: BlockPool, *, max_batch_size: int, max_num_tokens: int):
        if max_num_tokens < max_batch_size:
            raise ValueError(f"max_num_tokens ({max_num_tokens}) must be >= max_batch_size ({max_batch_size}): "
                             "every running sequence decodes one token per step")
        self.pool = pool
        self.max_batch_size, self.max_num_tokens = max_batch_size, max_num_tokens
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.free_slots = list(range(max_batch_size))  # a min-heap: the lowest free slot is taken first, so
        # running sequences stay packed at the low slots and the decoder steps only that prefix
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, *, keep_blocks: bool = False) -> None:
        """Free a running (or waiting) sequence's slot and, unless ``keep_blocks`` (its session holds
        them on), its pages."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if keep_blocks:
            seq.blocks = []
        self._drop(seq)

    def _drop(self, seq: Sequence) -> None:
        self.pool.release(seq.blocks)
        seq.blocks, seq.computed, seq.decoding, seq.resumed = [], 0, False, False
        if seq.slot is not None:
            heapq.heappush(self.free_slots, seq.slot)
            seq.slot = None

    def _grow(self, seq: Sequence, tokens: int) -> bool:
        """Give ``seq`` pages for ``tokens`` tokens; False if the pool cannot."""
        need = self.pool.blocks_for(tokens) - len(seq.blocks)
        if need <= 0:
            return True
        got = self.pool.allocate(need)
        if got is None:
            return False
        seq.blocks.extend(got)
        return True

    def _preempt(self, seq: Sequence, plan: Plan) -> None:
        self.running.remove(seq)
        plan.freed_slots.append(seq.slot)
        self._drop(seq)
        seq.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        plan.preempted.append(seq)

    def schedule(self) -> Plan:
        plan = Plan([], [], [], [], [])
        # 1. decoding sequences first, each with room for one more token
        for seq in list(self.running):
            if seq.prefilling or seq not in self.running:
                continue
            while not self._grow(seq, seq.computed + 1):
                victim = self.running[-1]
                self._preempt(victim, plan)
                if victim is seq:
                    break
            if seq in self.running:
                plan.decode.append(seq)
        budget = self.max_num_tokens - len(plan.decode)
        # 2. prefill chunks: sequences part-way through, then waiting ones
        for seq in [s for s in self.running if s.prefilling]:
            if budget <= 0:
                break
            chunk = self._chunk(seq, budget)
            if chunk is None:
                break
            plan.prefill.append(chunk)
            budget -= chunk.end - chunk.start
        while self.waiting and self.free_slots and budget > 0:
            seq = self.waiting[0]
            if seq in plan.preempted:  # the pool just ran dry: let running sequences free pages first
                break
            total = len(seq.tokens)
            if self.pool.blocks_for(total) > self.pool.num_blocks:
                self.waiting.popleft()
                seq.error = (f"the request needs {total} tokens of KV cache but the whole pool holds "
                             f"{self.pool.num_blocks * self.pool.block_size}; raise num_blocks or shorten it")
                plan.failed.append(seq)
                continue
            if not seq.resumed:
                seq.blocks = self.pool.match_prefix(seq.tokens)
                seq.computed = len(seq.blocks) * self.pool.block_size
            chunk = self._chunk(seq, budget)
            if chunk is None:  # no pages now: wait for running sequences to finish
                self._drop(seq)
                break
            self.waiting.popleft()
            seq.slot = heapq.heappop(self.free_slots)
            self.running.append(seq)
            plan.prefill.append(chunk)
            budget -= chunk.end - chunk.start
        return plan

    def _chunk(self, seq: Sequence, budget: int) -> Chunk | None:
        end = min(len(seq.tokens), seq.computed + budget)
        if not self._grow(seq, end):
            # take what the pool has: whole pages only
            room = (len(seq.blocks) + self.pool.num_free) * self.pool.block_size
            end = min(end, room)
            if end <= seq.computed or not self._grow(seq, end):
                return None
        return Chunk(seq, seq.computed, end)
