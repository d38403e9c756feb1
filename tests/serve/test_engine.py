"""The engine on a tiny random model: every request gives what ``generate`` gives it alone, whatever
else runs beside it; pages never leak; prefix hits, preemption, abort and bad input."""

import asyncio
import dataclasses
import time

import numpy as np
import pytest

from intern_jax.inference import Decoder, SamplingParams, generate
from intern_jax.serve import Engine, EngineConfig

RNG = np.random.default_rng(7)
PREFIX = RNG.integers(1, 97, 40).tolist()
PROMPTS = [RNG.integers(1, 97, n).tolist() for n in (3, 17, 9, 30, 5, 12)] + [PREFIX + [5, 6], PREFIX + [7]]


@pytest.fixture(scope="module")
def dec(tiny):
    cfg, params = tiny
    return Decoder(params, cfg)


@pytest.fixture(scope="module")
def alone(dec):
    sampling = SamplingParams(max_new_tokens=12)
    return {i: generate(dec, [p], sampling).tokens[0] for i, p in enumerate(PROMPTS)}


def _engine(dec, **kw):
    return Engine(dec, EngineConfig(**{"max_batch_size": 4, "max_num_tokens": 16, "block_size": 8, **kw}))


def _assert_no_leak(engine):
    assert engine.pool.num_free == engine.pool.num_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting and not engine.requests


@pytest.mark.parametrize("kw", [dict(), dict(num_blocks=9)], ids=["roomy", "small_pool_preempts"])
def test_concurrent_requests_each_equal_generate_alone(dec, alone, kw):
    engine = _engine(dec, **kw)
    before = dec.num_executables
    results = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12))
    assert [r.token_ids for r in results] == [alone[i] for i in range(len(PROMPTS))]
    assert all(r.finish_reason == "length" for r in results)
    if kw:
        assert engine.scheduler.num_preemptions > 0  # the small pool really forced recomputation
    _assert_no_leak(engine)
    # shapes are bucketed: inserts by stream length (one 16-token bucket) x rows (1, 2, 4), steps by live
    # rows (1, 2, 4); on the XLA attention path both also by pages per slot (1 ... 16). However many
    # requests come, at most 20 programs.
    again = engine.generate(PROMPTS * 2, SamplingParams(max_new_tokens=12))
    assert [r.token_ids for r in again] == [r.token_ids for r in results] * 2
    assert engine.stats()["compiled_executables"] - before <= 3 * 5 + 5
    assert engine.stats()["generated_tokens"] == 3 * 12 * len(PROMPTS)


def test_warm_up_compiles_what_single_requests_need_and_refuses_a_busy_engine(tiny, alone):
    cfg, params = tiny
    dec = Decoder(params, cfg)  # programs of its own, counted from zero
    engine = _engine(dec, max_batch_size=8, max_num_tokens=32)
    progress = []
    compiled = engine.warm_up(lambda done, total: progress.append((done, total)))
    # prefill at the stream lengths 16 and 32 (the budget) of one sequence, of the 4-row bucket (2 to 4
    # chunks at once) and of the 8-row one; decode steps of 1, 2, 4 and 8 live slots
    assert compiled == dec.num_executables == 10
    assert progress == [(k, 10) for k in range(1, 11)]
    _assert_no_leak(engine)
    for i in range(4):  # requests one at a time (the longest in two chunks), then all at once, compile nothing more
        assert engine.generate([PROMPTS[i]], SamplingParams(max_new_tokens=12))[0].token_ids == alone[i]
    results = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12))  # chunks of several at once
    assert [r.token_ids for r in results] == [alone[i] for i in range(len(PROMPTS))]
    if engine.batch.cache.native:  # the XLA attention path also compiles per table width
        assert dec.num_executables == compiled
    engine.add_request(PROMPTS[0])
    with pytest.raises(RuntimeError, match="idle engine"):
        engine.warm_up()


def test_a_preempted_sampled_request_draws_what_it_draws_alone(dec, seed):
    """Recomputed after preemption, a sampled request resumes its random stream, its budget and its
    frequency penalty's counts where they were: its tokens equal ``generate``'s for it alone."""
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, frequency_penalty=0.7, seed=seed % 2**31)
    want = [generate(dec, [p], dataclasses.replace(sampling, seed=sampling.seed + i)).tokens[0]
            for i, p in enumerate(PROMPTS)]
    engine = _engine(dec, num_blocks=9)
    results = engine.generate(PROMPTS, sampling)
    assert engine.scheduler.num_preemptions > 0
    assert [r.token_ids for r in results] == want
    _assert_no_leak(engine)


def test_cache_fraction_sizes_the_pool_from_the_memory_left(dec, tiny, alone):
    cfg, _ = tiny
    page_bytes = cfg.num_layers * 2 * 8 * cfg.num_kv_heads * cfg.head_dim * 4  # float32 keys and values, pages of 8
    with open("/proc/meminfo") as fh:
        available = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    engine = _engine(dec, cache_fraction=2e-5)
    want = 2e-5 * available / page_bytes
    assert abs(engine.pool.num_blocks - want) <= 0.1 * want  # the host's free memory moves a little meanwhile
    assert engine.generate([PROMPTS[3]], SamplingParams(max_new_tokens=12))[0].token_ids == alone[3]
    _assert_no_leak(engine)
    with pytest.raises(ValueError, match=r"cache_fraction=1e-12: .* holds 0 pages .* needs 16"):
        _engine(dec, cache_fraction=1e-12)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="cache_fraction must be in"):
            EngineConfig(cache_fraction=bad)
    with pytest.raises(ValueError, match="num_blocks or cache_fraction, not both"):
        EngineConfig(cache_fraction=0.5, num_blocks=4)


def test_shared_prefix_is_prefilled_once(dec, alone):
    engine = _engine(dec)
    first = engine.generate([PROMPTS[6]], SamplingParams(max_new_tokens=12))
    second = engine.generate([PROMPTS[7]], SamplingParams(max_new_tokens=12))
    assert first[0].token_ids == alone[6] and second[0].token_ids == alone[7]
    assert engine.pool.hit_tokens == 40  # the 5 full pages of the shared 40-token prefix
    _assert_no_leak(engine)


def test_abort_mid_stream_frees_the_pages_at_once(dec):
    engine = _engine(dec).start()

    async def run():
        got = []
        async for inc in engine.submit(PROMPTS[3], SamplingParams(max_new_tokens=60), request_id="r1"):
            got.append(inc)
            if len(got) == 3:
                engine.abort("r1")
        return got

    try:
        got = asyncio.run(asyncio.wait_for(run(), 120))
    finally:
        engine.close()
    assert got[-1].finished and got[-1].finish_reason == "abort"
    assert sum(len(i.token_ids) for i in got) < 60
    _assert_no_leak(engine)


def test_a_consumer_that_stops_early_frees_its_request_and_the_loop_goes_on(dec, alone):
    engine = _engine(dec).start()

    async def first_only():
        async for inc in engine.submit(PROMPTS[3], SamplingParams(max_new_tokens=60)):
            return inc  # the caller leaves (a closed connection); the event loop then closes

    try:
        assert asyncio.run(asyncio.wait_for(first_only(), 120)).token_ids
        deadline = time.monotonic() + 60
        while (engine.requests or engine.scheduler.has_work()) and time.monotonic() < deadline:
            time.sleep(0.05)
        _assert_no_leak(engine)
        assert engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12))[0].token_ids == alone[0]
    finally:
        engine.close()


def test_a_sessions_next_turn_prefills_only_the_new_tokens(dec):
    engine = _engine(dec)
    sampling = SamplingParams(max_new_tokens=6)
    turn1 = PROMPTS[3]
    reply1 = engine.generate([turn1], sampling, session_id="s")[0].token_ids
    assert reply1 == generate(dec, [turn1], sampling).tokens[0]
    assert engine.stats()["sessions"] == 1 and engine.pool.num_free < engine.pool.num_blocks  # pages kept
    turn2 = turn1 + reply1 + [4, 44, 14]
    before = engine.prefilled_tokens
    reply2 = engine.generate([turn2], sampling, session_id="s")[0].token_ids
    assert engine.prefilled_tokens - before == 4  # the last reply token (never fed) and the three new ones
    assert reply2 == generate(dec, [turn2], sampling).tokens[0]
    edited = turn1[:10] + [7, 7]  # an edited history reuses the common part only, and still decodes right
    got = engine.generate([edited], sampling, session_id="s")[0].token_ids
    assert got == generate(dec, [edited], sampling).tokens[0]
    engine.end_session("s")
    with pytest.raises(KeyError, match="no session 's'"):
        engine.end_session("s")
    _assert_no_leak(engine)
    with pytest.raises(ValueError, match="session 'long'.*end it"):
        engine.add_request([1] * 200, session_id="long")


def test_bad_requests_fail_alone_with_the_field_named(dec, alone):
    engine = _engine(dec)
    with pytest.raises(ValueError, match="prompt: 200 tokens"):
        engine.add_request([1] * 200)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.add_request([1, 2], SamplingParams(max_new_tokens=0))
    with pytest.raises(ValueError, match="prompt: empty"):
        engine.add_request([])
    with pytest.raises(ValueError, match="top_logprobs"):
        engine.add_request([1, 2], top_logprobs=3)
    with pytest.raises(KeyError, match="no running request 'nope'"):
        engine.abort("nope")
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    assert engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12))[0].token_ids == alone[0]


def test_an_exception_in_one_request_does_not_stop_the_engine(dec, alone):
    engine = _engine(dec)
    victim = engine.add_request(PROMPTS[1], SamplingParams(max_new_tokens=12))
    other = engine.add_request(PROMPTS[2], SamplingParams(max_new_tokens=12))

    class Exploding(frozenset):  # the victim's stop check raises once it has two tokens
        def __contains__(self, token):
            if len(victim_req.seq.output) >= 2:
                raise RuntimeError("injected")
            return False

    victim_req = next(r for r in engine._pending if r.seq.request_id == victim)
    victim_req.stop_ids = Exploding()
    ends, tokens = {}, {victim: [], other: []}
    for _ in range(100):
        for inc in engine.step():
            tokens[inc.request_id] += inc.token_ids
            if inc.finished:
                ends[inc.request_id] = (inc.finish_reason, inc.error)
        if len(ends) == 2:
            break
    assert ends[victim] == ("error", "RuntimeError: injected")
    assert ends[other] == ("length", None) and tokens[other] == alone[2]
    assert engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12))[0].token_ids == alone[0]
    _assert_no_leak(engine)
