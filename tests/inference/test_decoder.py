"""The KV cache layouts and the decoder's slots, log-probabilities, scoring and stop strings,
each against a plain full forward (no cache) of the same model."""

import threading
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.config import Execution
from intern_jax.inference import Decoder, PagedLayout, SamplingParams, StopStrings, generate
from intern_jax.inference.sampling import NO_TOKEN
from intern_jax.model import internlm2
from intern_jax.model.kv_cache import DenseKV, PagedKV

PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [12, 7], [33, 2, 71, 19, 54, 8, 90, 13, 66, 1, 42], [4, 4, 8]]


@pytest.fixture(scope="module")
def dec(tiny):
    cfg, params = tiny
    return Decoder(params, cfg)


@partial(jax.jit, static_argnames=("cfg",))
def _full_logits(params, tokens, cfg):
    return internlm2.forward(params, {"tokens": tokens}, cfg)[0]


@partial(jax.jit, static_argnames=("cfg", "execution"))
def _cached(params, tokens, cache, cfg, execution=Execution()):
    return internlm2.forward(params, {"tokens": tokens}, cfg, cache, execution=execution)


def _shuffled_tables(batch, pages_per_seq, num_pages, seed):
    """Each row's pages drawn without replacement from a pool bigger than needed, in random order."""
    order = np.random.default_rng(seed).permutation(num_pages)[: batch * pages_per_seq]
    return order.reshape(batch, pages_per_seq).astype(np.int32)


def _decode_pieces(params, cfg, cache, seqs, execution=Execution()):
    """Prefill 5 tokens, then feed the rest one at a time; all logits ``[B, T, V]``."""
    logits, cache = _cached(params, jnp.asarray(seqs[:, :5]), cache, cfg, execution)
    pieces = [logits]
    for i in range(5, seqs.shape[1]):
        logits, cache = _cached(params, jnp.asarray(seqs[:, i: i + 1]), cache, cfg, execution)
        pieces.append(logits)
    return np.asarray(jnp.concatenate(pieces, axis=1)), cache


@pytest.mark.parametrize("page_size", [4, 16])
def test_paged_cache_over_shuffled_pages_matches_full_forward(tiny, page_size):
    cfg, params = tiny
    seqs = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 23)).astype(np.int32)
    full = np.asarray(_full_logits(params, jnp.asarray(seqs), cfg))
    pages_per_seq = -(-32 // page_size)
    cache = PagedKV.init(cfg, num_pages=3 * pages_per_seq, page_size=page_size, batch_size=2,
                         pages_per_seq=pages_per_seq)
    cache = cache.with_block_tables(_shuffled_tables(2, pages_per_seq, 3 * pages_per_seq, page_size))
    got, cache = _decode_pieces(params, cfg, cache, seqs)
    np.testing.assert_allclose(got, full, atol=2e-5, rtol=2e-5)
    np.testing.assert_array_equal(cache.lengths, [23, 23])


def test_paged_writes_touch_only_the_rows_own_pages(tiny):
    cfg, params = tiny
    cache = PagedKV.init(cfg, num_pages=8, page_size=4, batch_size=1, pages_per_seq=2)
    cache = cache.with_block_tables(np.array([[5, 2]], np.int32))
    _, cache = _cached(params, jnp.asarray([[1, 2, 3, 4, 5, 6]], jnp.int32), cache, cfg)
    written = np.abs(np.asarray(cache.k)).sum(axis=(0, 1, 4)) > 0  # [pages, page_size]
    expect = np.zeros((8, 4), bool)
    expect[5, :] = True
    expect[2, :2] = True
    np.testing.assert_array_equal(written, expect)


def test_int8_cache_is_close_to_float_and_identical_dense_or_paged(tiny):
    cfg, params = tiny
    seqs = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 12)).astype(np.int32)
    full = np.asarray(_full_logits(params, jnp.asarray(seqs), cfg))
    dense, _ = _decode_pieces(params, cfg, DenseKV.init(cfg, 2, 16, int8=True), seqs)
    paged_cache = PagedKV.init(cfg, num_pages=8, page_size=4, batch_size=2, pages_per_seq=4, int8=True)
    paged_cache = paged_cache.with_block_tables(_shuffled_tables(2, 4, 8, 3))
    paged, _ = _decode_pieces(params, cfg, paged_cache, seqs)
    np.testing.assert_allclose(paged, dense, atol=1e-5, rtol=1e-5)
    # quantized (not exact), yet close: 8 bits per value and a scale per token and head give ~3% of the
    # largest logit on these random weights (their activations are far rougher than a trained model's)
    error = np.abs(dense - full).max() / np.abs(full).max()
    assert 1e-4 < error < 6e-2, error
    assert (dense.argmax(-1) == full.argmax(-1)).mean() >= 0.9


def test_pallas_paged_kernel_path_matches_the_xla_path(tiny):
    cfg, params = tiny
    seqs = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
    tables = _shuffled_tables(2, 2, 6, 5)
    out = {}
    for impl in ("xla", "pallas"):
        cache = PagedKV.init(cfg, num_pages=6, page_size=16, batch_size=2, pages_per_seq=2)
        out[impl], _ = _decode_pieces(params, cfg, cache.with_block_tables(tables), seqs,
                                      Execution(attention_impl=impl))
    np.testing.assert_allclose(out["pallas"], out["xla"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("paged", [None, PagedLayout(num_pages=24, page_size=8, pages_per_slot=4)],
                         ids=["dense", "paged"])
def test_slots_joining_and_leaving_mid_stream_each_decode_as_if_alone(tiny, dec, paged):
    """Continuous batching at the decoder level: sequences enter free slots between steps,
    leave when done, and a freed slot is reused; each gives exactly what generate gives alone."""
    sampling = SamplingParams(max_new_tokens=10)
    alone = {i: generate(dec, [p], sampling).tokens[0] for i, p in enumerate(PROMPTS)}
    batch = dec.new_batch(3, 32, paged=paged)
    if paged is not None:  # slot tables out of order, as a block pool hands them out
        batch.set_block_tables([0, 1, 2], _shuffled_tables(3, 4, 24, 9))
    got = {i: [] for i in range(len(PROMPTS))}
    owner = {}  # slot -> prompt index

    def start(slot, prompt):
        owner[slot] = prompt
        out = batch.insert([slot], [PROMPTS[prompt]], [sampling])
        got[prompt].append(int(out.tokens[0]))

    joins = {0: (0, 0), 3: (1, 1), 5: (2, 2)}  # step -> (slot, prompt)
    waiting = [3]  # takes the first slot that frees up
    for step in range(60):
        if step in joins:
            start(*joins[step])
        for slot in [s for s in owner if batch.done()[s]]:
            batch.release([slot])
            del owner[slot]
            if waiting:
                start(slot, waiting.pop())
        if not owner and step > max(joins):
            break
        out = batch.step()
        for slot, prompt in owner.items():
            if out.tokens[slot] != NO_TOKEN:
                got[prompt].append(int(out.tokens[slot]))
    assert got == alone
    assert not owner and not waiting


def test_logprobs_and_top_alternatives_equal_the_full_forwards_distribution(tiny, dec):
    cfg, params = tiny
    prompt = PROMPTS[2]
    batch = dec.new_batch(1, 32, num_top_logprobs=3)
    outs = [batch.insert([0], [prompt], [SamplingParams(max_new_tokens=6, temperature=0.9, seed=3)])]
    while not batch.done()[0]:
        outs.append(batch.step())
    tokens = [int(o.tokens[0]) for o in outs if o.tokens[0] != NO_TOKEN]
    seq = np.asarray([prompt + tokens], np.int32)
    logits = np.asarray(_full_logits(params, jnp.asarray(seq), cfg), np.float64)[0]
    ref = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    for j, (out, token) in enumerate(zip(outs, tokens)):
        row = ref[len(prompt) - 1 + j]
        np.testing.assert_allclose(out.logprobs[0], row[token], atol=1e-4)
        np.testing.assert_array_equal(out.top_ids[0], np.argsort(-row)[:3])
        np.testing.assert_allclose(out.top_logprobs[0], np.sort(row)[::-1][:3], atol=1e-4)


def _log_softmax64(logits):
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def _step_rows(dec) -> list[int]:
    """The row counts of the decode steps the decoder has compiled (the length of their last argument, the
    live rows, when no token masks are passed)."""
    return sorted({key[3][-1][0][0] for key in dec._executables if key[0].__name__ == "_live_step"})


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "xla"])
def test_packed_chunks_and_live_row_steps_give_the_full_forwards_distribution(tiny, native, monkeypatch):
    """A paged batch packs the prompts of one insert into a single stream (a later chunk of a sequence
    among them) and steps only its live slots; every token's log-probability is the full forward's,
    with the native paged attention and with the XLA gather."""
    monkeypatch.setenv("INTERN_JAX_NATIVE", native)
    cfg, params = tiny
    dec = Decoder(params, cfg)
    batch = dec.new_batch(4, paged=PagedLayout(num_pages=16, page_size=4, pages_per_slot=4))
    assert batch.cache.native == (native == "1")
    batch.set_block_tables([0, 1, 2, 3], _shuffled_tables(4, 4, 16, 5))
    long, sampling = PROMPTS[2], SamplingParams(max_new_tokens=4)
    seqs = {3: list(long), 0: list(PROMPTS[0]), 2: list(PROMPTS[1])}
    emitted = {slot: [] for slot in seqs}

    def record(slots, out, before):
        for i, slot in enumerate(slots):
            if out.tokens[i] != NO_TOKEN:
                emitted[slot].append((before[slot] - 1, int(out.tokens[i]), float(out.logprobs[i])))

    # slot 3's prompt comes in two chunks: its first 6 tokens alone, the rest packed with two new prompts
    batch.insert([3], [long[:6]], [SamplingParams(max_new_tokens=0)])
    out = batch.insert([3, 0, 2], [long[6:], seqs[0], seqs[2]], [sampling] * 3, keep=[6, 0, 0],
                       history=[long, seqs[0], seqs[2]])
    record([3, 0, 2], out, {s: len(q) for s, q in seqs.items()})
    for slot, token in zip([3, 0, 2], out.tokens):
        seqs[slot].append(int(token))
    for _ in range(4):
        before = {s: len(q) for s, q in seqs.items()}
        out = batch.step()
        record(list(range(4)), out, before)
        for slot in seqs:
            if out.tokens[slot] != NO_TOKEN:
                seqs[slot].append(int(out.tokens[slot]))
        if 0 in seqs and len(emitted[0]) == 2:
            batch.release([0])  # slot 0 leaves: slots 2 and 3 step as two rows
            del seqs[0]
    assert _step_rows(dec) == [2, 4]  # three live slots of four: 4 rows; then two
    for slot, tokens in emitted.items():
        full = seqs.get(slot, PROMPTS[0] + [t for _, t, _ in tokens])
        ref = _log_softmax64(_full_logits(params, jnp.asarray([full], jnp.int32), cfg)[0])
        assert len(tokens) == (2 if slot == 0 else 4)
        for position, token, logprob in tokens:
            assert token == int(np.argmax(ref[position])), (slot, position)
            np.testing.assert_allclose(logprob, ref[position, token], atol=1e-4)


def test_score_equals_float64_log_softmax_of_the_full_forward(tiny, dec):
    cfg, params = tiny
    seqs = [PROMPTS[0] + [1, 2, 3], PROMPTS[1], PROMPTS[2]]
    starts = [len(PROMPTS[0]), 1, 4]
    scored = dec.score(seqs, starts)
    for seq, start, (logprobs, greedy) in zip(seqs, starts, scored):
        logits = np.asarray(_full_logits(params, jnp.asarray([seq], jnp.int32), cfg), np.float64)[0]
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        want = [logits[t - 1, seq[t]] - lse[t - 1] for t in range(start, len(seq))]
        np.testing.assert_allclose(logprobs, want, atol=1e-4)
        np.testing.assert_array_equal(greedy, [logits[t - 1].argmax() == seq[t] for t in range(start, len(seq))])
    with pytest.raises(ValueError, match="start 0"):
        dec.score([[1, 2]], [0])


def test_generate_reports_the_logprob_of_every_token(tiny, dec):
    result = generate(dec, PROMPTS[:2], SamplingParams(max_new_tokens=5))
    assert [len(x) for x in result.logprobs] == result.num_generated
    assert all(x <= 0 for row in result.logprobs for x in row)


def test_tensor_parallel_packed_weights_are_refused_by_name(tiny):
    from intern_jax.model.quantized import quantize_params

    cfg, params = tiny
    with pytest.raises(ValueError, match=r"tp=2 with packed \(quantized\) weights.*tp=1"):
        Decoder(quantize_params(params, cfg, 8, 32), cfg, tp=2)


def test_the_paged_kernel_decodes_the_xla_paths_tokens(tiny):
    """``Execution(attention_impl="pallas")`` reaches the cached forward: the paged batch reads its pages
    through the Pallas kernel (interpreted on CPU; its programs carry the kernel) and decodes what the XLA
    gather decodes."""
    cfg, params = tiny
    sampling = [SamplingParams(max_new_tokens=3)] * 2
    tokens, kernel = {}, {}
    for impl in ("xla", "pallas"):
        decoder = Decoder(params, cfg, execution=Execution(attention_impl=impl))
        batch = decoder.new_batch(2, paged=PagedLayout(num_pages=8, page_size=8, pages_per_slot=4))
        tokens[impl] = [list(batch.insert([0, 1], PROMPTS[:2], sampling).tokens), list(batch.step().tokens)]
        kernel[impl] = ["paged_prefill" in exe.as_text() for exe in decoder._executables.values()]
    assert tokens["pallas"] == tokens["xla"]
    assert kernel == {"xla": [False, False], "pallas": [True, True]}


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_decoding_gives_the_same_greedy_tokens(tiny, dec, tp):
    cfg, params = tiny
    sharded = Decoder(params, cfg, tp=tp)
    assert len(sharded.params["layers"][0]["w1"].sharding.device_set) == tp  # the MLP really is split
    sampling = SamplingParams(max_new_tokens=10)
    assert generate(sharded, PROMPTS, sampling).tokens == generate(dec, PROMPTS, sampling).tokens
    batch = sharded.new_batch(2, 32, paged=PagedLayout(num_pages=8, page_size=8, pages_per_slot=4))
    first = batch.insert([0, 1], PROMPTS[:2], [sampling] * 2)
    tokens = [[int(t)] for t in first.tokens]
    for _ in range(9):
        out = batch.step()
        for row in (0, 1):
            tokens[row].append(int(out.tokens[row]))
    assert tokens == generate(dec, PROMPTS[:2], sampling).tokens


def test_one_decoder_serves_threads_at_once(tiny, dec):
    sampling = SamplingParams(max_new_tokens=8)
    want = [generate(dec, [p], sampling).tokens[0] for p in PROMPTS]
    got = [None] * len(PROMPTS)

    def run(i):
        got[i] = generate(dec, [PROMPTS[i]], sampling).tokens[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


@pytest.mark.parametrize("pieces, stops, want", [
    (["Hello", " wor", "ld</", "answer> tail"], ["</answer>"], "Hello world"),
    (["a<", "b", "<stop", ">"], ["<stop>"], "a<b"),
    (["no stop ", "here <", "sto"], ["<stop>"], "no stop here <sto"),
    (["x", "yz"], ["yz", "y"], "x"),
])
def test_stop_strings_cut_the_text_at_the_first_match_across_pieces(pieces, stops, want):
    s = StopStrings(stops)
    text = "".join(s.push(p) for p in pieces) + s.flush()
    assert text == want
    assert s.stopped == (want != "".join(pieces))


def test_compiled_functions_are_bounded_least_recently_used_first_and_recompile_the_same(tiny):
    """At most ``max_executables`` compiled functions live at once: the least recently used one is
    dropped (and freed: nothing else holds it), and compiled again when its shape comes back."""
    import gc
    import weakref

    cfg, params = tiny
    decoder = Decoder(params, cfg, max_executables=2)
    sampling = SamplingParams(max_new_tokens=1)

    def first_tokens(slots):
        batch = decoder.new_batch(slots, 32)
        return list(batch.insert(list(range(slots)), PROMPTS[:slots], [sampling] * slots).tokens)

    one = first_tokens(1)
    oldest = weakref.ref(next(iter(decoder._executables.values())))
    two = first_tokens(2)
    assert first_tokens(1) == one and decoder.num_executables == 2 and decoder.evicted_executables == 0
    first_tokens(4)  # a third shape: the 2-slot insert, least recently used, goes
    gc.collect()
    assert decoder.num_executables == 2 and decoder.evicted_executables == 1 and oldest() is not None
    before = decoder.compile_seconds
    assert first_tokens(2) == two and decoder.compile_seconds > before  # compiled again, same tokens
    assert decoder.evicted_executables == 2
    gc.collect()
    assert oldest() is None  # the 1-slot insert was evicted by the recompiled 2-slot one, and freed
    assert decoder.forget_compiled() == 2 and decoder.num_executables == 0
    with pytest.raises(ValueError, match="max_executables must be >= 1"):
        Decoder(params, cfg, max_executables=0)


def test_with_params_decodes_other_weights_on_the_programs_already_compiled(tiny):
    """A fine-tune decoded by ``with_params``: what a decoder built over those weights decodes, with nothing
    compiled again, the original decoder unchanged; weights of another shape are refused by name."""
    import dataclasses

    from intern_jax.testing import random_params

    cfg, params = tiny
    other = random_params(cfg, 7, scale=0.3, norm_scale=0.3)
    sampling = SamplingParams(max_new_tokens=6)
    first = Decoder(params, cfg)
    mine = generate(first, PROMPTS, sampling)
    compiled = first.num_executables
    twin = first.with_params(other)
    got, want = generate(twin, PROMPTS, sampling), generate(Decoder(other, cfg), PROMPTS, sampling)
    assert got.tokens == want.tokens and got.tokens != mine.tokens
    np.testing.assert_allclose(np.concatenate(got.logprobs), np.concatenate(want.logprobs), atol=1e-5)
    assert first.num_executables == compiled and twin.num_executables == compiled
    assert generate(first, PROMPTS, sampling).tokens == mine.tokens
    wider = random_params(dataclasses.replace(cfg, vocab_size=101), 7)
    with pytest.raises(ValueError, match=r"with_params: weight \['output'\] is float32\[64, 101\], this model's is "
                                         r"float32\[64, 97\]"):
        first.with_params(wider)
