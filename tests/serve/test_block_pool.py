"""The block pool and the scheduler as plain data: no model."""

import pytest

from intern_jax.inference.sampling import SamplingParams
from intern_jax.serve.block_pool import BlockPool
from intern_jax.serve.scheduler import Scheduler, Sequence


def test_pages_are_reference_counted_and_cached_pages_are_evicted_oldest_first():
    pool = BlockPool(4, 2)
    a = pool.allocate(2)
    pool.register(a, [1, 2, 3, 4])
    pool.release(a)
    assert pool.num_free == 4
    shared = pool.match_prefix([1, 2, 3, 4, 5])  # both full blocks hit; the 5th token is left to compute
    assert shared == a and pool.hit_rate == 1.0
    assert pool.allocate(3) is None  # only 2 free now
    pool.release(shared)
    b = pool.allocate(3)  # the 2 never-used pages, then the oldest released cached page
    assert set(b) & set(a) == {a[0]}
    assert pool.match_prefix([1, 2, 3, 4, 5]) == []  # its first block was evicted, so no prefix hit
    with pytest.raises(ValueError, match="released more often"):
        pool.release([a[1], a[1]])


def test_prefix_match_needs_the_whole_prefix_and_leaves_the_last_token():
    pool = BlockPool(8, 2)
    blocks = pool.allocate(3)
    pool.register(blocks, [1, 2, 3, 4, 5, 6])
    assert pool.match_prefix([9, 2, 3, 4]) == []  # same second block, different first: different key
    assert pool.match_prefix([1, 2, 3, 4]) == blocks[:1]  # the last token stays out: only [1, 2] reused
    assert pool.match_prefix([1, 2, 3, 4, 5, 6, 7]) == blocks


def _seq(n, max_new=4):
    return Sequence(list(range(1, n + 1)), SamplingParams(max_new_tokens=max_new))


def test_long_prompt_is_prefilled_in_chunks_while_others_decode():
    sched = Scheduler(BlockPool(64, 4), max_batch_size=4, max_num_tokens=8)
    short, long = _seq(3), _seq(30)
    sched.add(short)
    plan = sched.schedule()
    assert [(c.seq, c.start, c.end) for c in plan.prefill] == [(short, 0, 3)]
    short.computed, short.decoding = 3, True
    short.output.append(7)
    sched.add(long)
    chunks = []
    for _ in range(5):
        plan = sched.schedule()
        assert plan.decode == [short]  # the running stream decodes at every step
        short.computed += 1
        for c in plan.prefill:
            chunks.append((c.start, c.end))
            c.seq.computed = c.end
        if long.computed == 30:
            break
    assert chunks == [(0, 7), (7, 14), (14, 21), (21, 28), (28, 30)]  # 8 tokens per step, 1 for the decode


def test_pool_exhaustion_preempts_the_newest_sequence_and_requeues_it():
    sched = Scheduler(BlockPool(4, 2), max_batch_size=4, max_num_tokens=16)
    a, b = _seq(4), _seq(4)
    sched.add(a)
    sched.add(b)
    plan = sched.schedule()
    assert len(plan.prefill) == 2 and sched.pool.num_free == 0
    for s in (a, b):
        s.computed, s.decoding = 4, True
        s.output.append(9)
    plan = sched.schedule()  # both need a 3rd page for their 5th token; only one can have it
    assert plan.preempted == [b] and plan.decode == [a] and plan.freed_slots == [1]
    assert list(sched.waiting) == [b] and b.blocks == [] and not b.decoding


def test_request_larger_than_the_whole_pool_fails_with_a_clear_error():
    sched = Scheduler(BlockPool(2, 2), max_batch_size=2, max_num_tokens=16)
    big = _seq(9)
    sched.add(big)
    plan = sched.schedule()
    assert plan.failed == [big] and "raise num_blocks" in big.error
    assert sched.pool.num_free == 2
