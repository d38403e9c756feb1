"""generate / stream_generate / ChatSession on a random tiny model against plain full forwards."""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.inference import ChatSession, Decoder, SamplingParams, generate, stream_generate
from intern_jax.inference.decoder import decode_layout
from intern_jax.model import internlm2
from intern_jax.model.kv_cache import DenseKV

PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [12, 7], [33, 2, 71, 19, 54, 8, 90, 13, 66, 1, 42]]
REF_LEN = 32


@partial(jax.jit, static_argnames=("cfg",))
def _full_logits(params, tokens, cfg):
    return internlm2.forward(params, {"tokens": tokens}, cfg)[0]


def greedy_by_full_forward(params, cfg, prompt, n):
    """Reference: append argmax of a fresh full forward over the whole sequence, ``n`` times."""
    seq = list(prompt)
    for _ in range(n):
        padded = np.zeros((1, REF_LEN), np.int32)  # causal: trailing filler never affects earlier logits
        padded[0, : len(seq)] = seq
        seq.append(int(jnp.argmax(_full_logits(params, jnp.asarray(padded), cfg)[0, len(seq) - 1])))
    return seq[len(prompt):]


@pytest.fixture(scope="module")
def dec(tiny):
    """One decoder for the module's tests, so compiled functions are shared between them."""
    cfg, params = tiny
    return Decoder(params, cfg)


def test_greedy_generate_matches_repeated_full_forward_for_ragged_batch(tiny, dec):
    cfg, params = tiny
    result = generate(dec, PROMPTS, SamplingParams(max_new_tokens=12))
    assert result.finish_reasons == ["length"] * 3
    for prompt, tokens in zip(PROMPTS, result.tokens):
        assert tokens == greedy_by_full_forward(params, cfg, prompt, 12)
    alone = generate(dec, [PROMPTS[2]], SamplingParams(max_new_tokens=12))
    assert alone.tokens[0] == result.tokens[2]


def test_decode_layout_unstacks_layers_and_unties_the_head(tiny_tied):
    cfg, params = tiny_tied
    fast_params, fast_cfg = decode_layout(params, cfg)
    assert isinstance(fast_params["layers"], list) and not fast_cfg.tie_word_embeddings
    dec = Decoder(params, cfg)
    assert dec.config == cfg  # the decode layout stays private
    ours = generate(dec, [PROMPTS[0]], SamplingParams(max_new_tokens=6)).tokens[0]
    assert ours == greedy_by_full_forward(params, cfg, PROMPTS[0], 6)


@pytest.mark.parametrize("prepared", [False, True])
def test_kv_cache_decode_logits_match_full_forward(tiny, prepared):
    cfg, params = tiny
    run_params, run_cfg = decode_layout(params, cfg) if prepared else (params, cfg)
    seqs = np.array([PROMPTS[2][:10], PROMPTS[0] + [1, 2, 3]], np.int32)
    full = _full_logits(params, jnp.asarray(seqs), cfg)
    cache = DenseKV.init(run_cfg, 2, 16)
    logits, cache = _cached_logits(run_params, jnp.asarray(seqs[:, :6]), cache, run_cfg)
    np.testing.assert_allclose(logits[:, -1], full[:, 5], atol=2e-5, rtol=2e-5)
    for i in range(6, 10):
        logits, cache = _cached_logits(run_params, jnp.asarray(seqs[:, i : i + 1]), cache, run_cfg)
        np.testing.assert_allclose(logits[:, -1], full[:, i], atol=2e-5, rtol=2e-5)


@partial(jax.jit, static_argnames=("cfg",))
def _cached_logits(params, tokens, cache, cfg):
    return internlm2.forward(params, {"tokens": tokens}, cfg, cache)


def test_stop_token_ends_its_row_and_other_rows_continue(tiny, dec):
    cfg, params = tiny
    free = generate(dec, PROMPTS, SamplingParams(max_new_tokens=12)).tokens
    stop = free[0][3]
    first = free[0].index(stop)
    rows = [SamplingParams(max_new_tokens=12, stop_ids=(stop,))] + [SamplingParams(max_new_tokens=12)] * 2
    result = generate(dec, PROMPTS, rows)
    assert result.tokens[0] == free[0][: first + 1]
    assert result.finish_reasons == ["stop", "length", "length"]
    assert result.tokens[1:] == free[1:]


def test_max_new_tokens_per_row(tiny, dec):
    cfg, params = tiny
    rows = [SamplingParams(max_new_tokens=n) for n in (3, 12, 1)]
    result = generate(dec, PROMPTS, rows)
    assert result.num_generated == [3, 12, 1]


def test_top_k_one_equals_greedy(tiny, dec):
    cfg, params = tiny
    greedy = generate(dec, PROMPTS, SamplingParams(max_new_tokens=12)).tokens
    top1 = generate(dec, PROMPTS, SamplingParams(temperature=1.5, top_k=1, max_new_tokens=12, seed=4))
    assert top1.tokens == greedy


def test_seeded_sampling_is_reproducible_and_independent_of_batch_mates(tiny, dec):
    cfg, params = tiny
    rows = [SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=s) for s in (11, 12, 13)]
    a = generate(dec, PROMPTS, rows).tokens
    b = generate(dec, PROMPTS, rows).tokens
    assert a == b
    alone = generate(dec, [PROMPTS[1]], [rows[1]]).tokens[0]
    assert alone == a[1]
    other_seed = generate(dec, [PROMPTS[1]], [dataclasses.replace(rows[1], seed=99)]).tokens[0]
    assert other_seed != a[1]


@pytest.mark.parametrize("sampling", [SamplingParams(max_new_tokens=12),
                                      SamplingParams(temperature=0.8, top_k=10, max_new_tokens=12, seed=5)])
def test_streaming_yields_exactly_the_tokens_generate_returns(tiny, sampling, dec):
    cfg, params = tiny
    rows = [sampling, dataclasses.replace(sampling, max_new_tokens=4), sampling]
    expected = generate(dec, PROMPTS, rows)
    stream = stream_generate(dec, PROMPTS, rows)
    got = [[] for _ in PROMPTS]
    steps = 0
    while True:
        try:
            step = next(stream)
        except StopIteration as end:
            result = end.value
            break
        steps += 1
        for row, token in zip(got, step):
            if token is not None:
                row.append(token)
    assert got == expected.tokens
    assert result.tokens == expected.tokens and result.finish_reasons == expected.finish_reasons
    assert steps == max(len(t) for t in expected.tokens)


def test_chat_session_second_turn_equals_fresh_run_over_full_history(tiny, dec):
    cfg, params = tiny
    sampling = SamplingParams(max_new_tokens=8)
    session = ChatSession(dec, sampling=sampling)
    turn1 = PROMPTS[0]
    reply1 = list(session.respond(turn1))
    assert reply1 == generate(dec, [turn1], sampling).tokens[0]
    turn2 = turn1 + reply1 + [4, 44, 14]
    reply2 = list(session.respond(turn2))
    assert session.prefilled_tokens == 4  # the last reply token and the three new ones
    assert reply2 == generate(dec, [turn2], sampling).tokens[0]
    # An edited history reuses only the common prefix and still matches a fresh run.
    edited = turn1[:3] + [7, 7]
    assert list(session.respond(edited)) == generate(dec, [edited], sampling).tokens[0]


def test_prompt_longer_than_context_raises_naming_the_lengths(tiny, dec):
    cfg, params = tiny
    too_long = [1] * (cfg.max_position_embeddings + 5)
    with pytest.raises(ValueError, match=r"133 tokens.*context is 128"):
        generate(dec, [PROMPTS[0], too_long])


def test_budget_is_clamped_to_the_context(tiny, dec):
    cfg, params = tiny
    prompt = [3] * (cfg.max_position_embeddings - 4)
    result = generate(dec, [prompt], SamplingParams(max_new_tokens=50))
    assert result.num_generated == [4] and result.finish_reasons == ["length"]


def test_bad_token_ids_and_empty_prompts_raise(tiny, dec):
    cfg, params = tiny
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(dec, [[1, cfg.vocab_size]])
    with pytest.raises(ValueError, match="empty"):
        generate(dec, [[]])


def test_repeated_calls_reuse_compiled_executables(tiny, dec):
    cfg, params = tiny
    generate(dec, PROMPTS, SamplingParams(max_new_tokens=12))
    again = generate(dec, [p[:-1] for p in PROMPTS], SamplingParams(max_new_tokens=10, temperature=0.5))
    assert again.compile_s == 0.0
