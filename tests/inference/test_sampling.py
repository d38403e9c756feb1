"""Logit processing against transformers' processors and a numpy reference; key handling."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from intern_jax.inference.sampling import (
    NO_TOKEN,
    SamplingParams,
    filter_top_k_top_p,
    init_state,
    process_logits,
    sample,
)

V = 211


def numpy_top_k_top_p(logits, k, p):
    """Reference: keep the k largest, then the smallest prefix (by probability) with mass >= p."""
    out = logits.astype(np.float64).copy()
    if k > 0:
        kth = np.sort(out)[::-1][k - 1]
        out[out < kth] = -np.inf
    if p < 1.0:
        order = np.argsort(-out, kind="stable")
        probs = np.exp(out[order] - out[order][0])
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        drop = order[(before >= p) & (np.arange(len(order)) > 0)]
        out[drop] = -np.inf
    return out


@pytest.mark.parametrize("seed", range(4))
def test_top_k_top_p_match_numpy_reference_and_transformers(seed):
    rng = np.random.default_rng(seed)
    b = 6
    logits = rng.normal(size=(b, V)).astype(np.float32) * 3
    top_k = np.array([0, 1, 5, 50, 0, 17], np.int32)
    top_p = np.array([0.9, 1.0, 0.5, 0.95, 0.3, 1.0], np.float32)
    ours = np.asarray(filter_top_k_top_p(logits, top_k, top_p))
    for i in range(b):
        ref = numpy_top_k_top_p(logits[i], int(top_k[i]), float(top_p[i]))
        np.testing.assert_array_equal(np.isinf(ours[i]), np.isinf(ref))
        x = torch.from_numpy(logits[i : i + 1].copy())
        if top_k[i] > 0:
            x = TopKLogitsWarper(int(top_k[i]))(None, x)
        if top_p[i] < 1.0:
            x = TopPLogitsWarper(float(top_p[i]))(None, x)
        np.testing.assert_array_equal(np.isinf(ours[i]), np.isinf(x.numpy()[0]))
        kept = ~np.isinf(ours[i])
        np.testing.assert_array_equal(ours[i][kept], logits[i][kept])


def test_repetition_penalty_temperature_and_filters_match_transformers():
    rng = np.random.default_rng(7)
    b = 4
    logits = rng.normal(size=(b, V)).astype(np.float32) * 2
    prompt = rng.integers(0, V, size=(b, 12))
    rows = [SamplingParams(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3, seed=i) for i in range(b)]
    state = init_state(rows, V, prompt)
    ours = np.asarray(process_logits(logits, state))
    x = torch.from_numpy(logits.copy())
    ids = torch.from_numpy(prompt)
    x = RepetitionPenaltyLogitsProcessor(1.3)(ids, x)
    x = TemperatureLogitsWarper(0.7)(ids, x)
    x = TopKLogitsWarper(20)(ids, x)
    x = TopPLogitsWarper(0.8)(ids, x)
    ref = x.numpy()
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    kept = ~np.isinf(ref)
    np.testing.assert_allclose(ours[kept], ref[kept], rtol=1e-6)


def test_greedy_rows_pick_argmax_of_penalized_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, V)).astype(np.float32)
    prompt = np.argsort(-logits, axis=1)[:, :1]  # the top token was seen: the penalty demotes it
    state = init_state([SamplingParams(repetition_penalty=100.0), SamplingParams()], V, prompt)
    tokens, _ = sample(logits, state)
    assert int(tokens[0]) == int(np.argsort(-logits[0])[1])
    assert int(tokens[1]) == int(np.argmax(logits[1]))


def test_sampling_draws_follow_the_distribution():
    logits = np.log(np.array([[0.6, 0.3, 0.1] + [1e-9] * (V - 3)], np.float32))
    rows = [SamplingParams(temperature=1.0, seed=s) for s in range(400)]
    state = init_state(rows, V)
    tokens, _ = sample(np.repeat(logits, 400, axis=0), state)
    counts = np.bincount(np.asarray(tokens), minlength=3)[:3] / 400
    np.testing.assert_allclose(counts, [0.6, 0.3, 0.1], atol=0.08)


def test_finished_rows_emit_nothing_and_stop_tokens_finish_rows():
    logits = np.zeros((2, V), np.float32)
    logits[:, 5] = 10.0
    state = init_state([SamplingParams(stop_ids=(5,)), SamplingParams(max_new_tokens=3)], V)
    tokens, state = sample(logits, state)
    assert list(np.asarray(tokens)) == [5, 5]
    assert list(np.asarray(state["done"])) == [True, False]
    assert list(np.asarray(state["stopped"])) == [True, False]
    tokens, state = sample(logits, state)
    assert list(np.asarray(tokens)) == [NO_TOKEN, 5]


def test_invalid_sampling_params_raise():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)


def test_min_p_matches_transformers_warper():
    from transformers.generation.logits_process import MinPLogitsWarper

    rng = np.random.default_rng(11)
    logits = rng.normal(size=(4, V)).astype(np.float32) * 3
    min_p = np.array([0.0, 0.05, 0.2, 0.9], np.float32)
    rows = [SamplingParams(temperature=1.0, min_p=float(m)) for m in min_p]
    ours = np.asarray(process_logits(logits, init_state(rows, V)))
    for i, m in enumerate(min_p):
        theirs = torch.from_numpy(logits[i: i + 1].copy())
        if m > 0:
            theirs = MinPLogitsWarper(float(m))(None, theirs)
        np.testing.assert_array_equal(np.isinf(ours[i]), np.isinf(theirs.numpy()[0]), err_msg=f"min_p {m}")
    assert np.isinf(ours[3]).sum() > np.isinf(ours[1]).sum() > 0


def test_presence_and_frequency_penalties_follow_the_counts_of_generated_tokens():
    rng = np.random.default_rng(12)
    logits = rng.normal(size=(2, V)).astype(np.float32)
    rows = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), SamplingParams()]
    state = init_state(rows, V)
    state = {**state, "counts": state["counts"].at[0, 7].set(3).at[0, 9].set(1).at[1, 7].set(2)}
    ours = np.asarray(process_logits(logits, state))
    want = logits.astype(np.float64).copy()
    want[0, 7] -= 0.25 * 3 + 0.5
    want[0, 9] -= 0.25 * 1 + 0.5
    np.testing.assert_allclose(ours, want, rtol=1e-6)  # row 1 has both off: unchanged
    # sampling counts what it emits
    tokens, new = sample(jnp.asarray(logits), init_state(rows, V))
    assert [int(new["counts"][r, int(tokens[r])]) for r in range(2)] == [1, 1]


def test_min_new_tokens_holds_stop_ids_back_as_transformers_does():
    from transformers.generation.logits_process import MinNewTokensLengthLogitsProcessor

    rng = np.random.default_rng(13)
    logits = rng.normal(size=(1, V)).astype(np.float32)
    stop = int(np.argmax(logits[0]))  # greedy would stop at once
    state = init_state([SamplingParams(stop_ids=(stop, 3), min_new_tokens=2)], V)
    ours = np.asarray(process_logits(logits, state))
    theirs = MinNewTokensLengthLogitsProcessor(0, 2, [stop, 3])(torch.zeros((1, 0), dtype=torch.long),
                                                                 torch.from_numpy(logits.copy()))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs.numpy()))
    assert np.isinf(ours[0, stop]) and np.isinf(ours[0, 3])
    state = {**state, "num_generated": jnp.asarray([2], jnp.int32)}
    assert not np.isinf(np.asarray(process_logits(logits, state))).any()  # released after 2 tokens


@pytest.mark.parametrize("field, value", [("min_p", 1.0), ("min_p", float("nan")), ("presence_penalty", 2.5),
                                          ("frequency_penalty", -3.0), ("min_new_tokens", -1)])
def test_new_sampling_fields_are_validated_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})
