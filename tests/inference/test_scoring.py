"""Scoring with shared contexts (``inference.scoring``, behind ``Decoder.score``) against the log-softmax
of a plain full forward (no cache, the head over every position) of each whole sequence."""

from functools import partial

import jax
import numpy as np
import pytest

from intern_jax.inference import Decoder
from intern_jax.inference.scoring import plan_batches, score_sequences
from intern_jax.model import internlm2


@partial(jax.jit, static_argnames=("cfg",))
def _full_logits(params, tokens, cfg):
    return internlm2.forward(params, {"tokens": tokens}, cfg)[0]


def _reference(params, cfg, seq, start):
    """float64 log p(seq[t] | seq[:t]) for t >= start, and the float64 logits' argmax margin at each."""
    padded = np.zeros((1, -(-len(seq) // 32) * 32), np.int32)  # causal: trailing tokens change nothing before them
    padded[0, : len(seq)] = seq
    logits = np.asarray(_full_logits(params, padded, cfg), np.float64)[0, : len(seq)]
    top = logits.max(-1)
    lse = np.log(np.exp(logits - top[:, None]).sum(-1)) + top
    rows = range(start - 1, len(seq) - 1)
    want = np.array([logits[t, seq[t + 1]] - lse[t] for t in rows])
    greedy = np.array([logits[t].argmax() == seq[t + 1] for t in rows], bool)
    second = np.sort(logits, axis=-1)[:, -2]
    margin = np.array([top[t] - second[t] for t in rows])
    return want, greedy, margin


def _multiple_choice(rng, vocab, items, choices):
    """Sequences of ``items`` shared contexts x ``choices`` continuations of 1-4 tokens, plus loners."""
    sequences, starts = [], []
    contexts = [rng.integers(0, vocab, int(rng.integers(2, 16))).tolist() for _ in range(items)]
    # a sibling that differs from the first context only just before its last token
    contexts.append(contexts[0][:-2] + [(contexts[0][-2] + 1) % vocab] + contexts[0][-1:])
    for context in contexts:
        for _ in range(choices):
            sequences.append(context + rng.integers(0, vocab, int(rng.integers(1, 5))).tolist())
            starts.append(len(context))
    # no shared context: start 1 (every token scored), and start == len (nothing scored)
    sequences += [rng.integers(0, vocab, 9).tolist(), rng.integers(0, vocab, 4).tolist()]
    starts += [1, 4]
    order = rng.permutation(len(sequences))
    return [sequences[i] for i in order], [starts[i] for i in order]


def _check(params, cfg, sequences, starts, scored, float32_parity):
    for seq, start, (logprobs, greedy) in zip(sequences, starts, scored, strict=True):
        want, want_greedy, margin = _reference(params, cfg, seq, start)
        assert logprobs.shape == want.shape and greedy.shape == want.shape
        if want.size:
            float32_parity(logprobs, want, what=f"sequence {seq} from {start}")
            clear = margin > 1e-3  # a near-tie may fall either way in float32
            np.testing.assert_array_equal(greedy[clear], want_greedy[clear])


@pytest.mark.parametrize("items, batch_size", [(2, 3), (5, 32)])  # 3: groups split over batches
def test_shared_context_scores_equal_the_full_forward(tiny, rng, items, batch_size, float32_parity):
    cfg, params = tiny
    sequences, starts = _multiple_choice(rng, cfg.vocab_size, items=items, choices=4)
    scored = score_sequences(Decoder(params, cfg), sequences, starts, batch_size=batch_size)
    _check(params, cfg, sequences, starts, scored, float32_parity)


def test_each_context_runs_once_per_batch_and_a_large_group_is_split():
    context = [7, 8, 9]
    sequences = [context + [i] for i in range(10)] + [[1, 2, 3], [5, 6]]
    starts = [3] * 10 + [2, 1]
    batches = plan_batches(sequences, starts, batch_size=4)
    groups = [g for b in batches for g in b]
    assert sorted(i for g in groups for i in g) == list(range(12))
    for g in groups:  # a group's members share everything before their last context token
        assert len({tuple(sequences[i][: starts[i] - 1]) for i in g}) == 1
    assert sorted(len(g) for g in groups if g[0] < 10) == [2, 4, 4]
    assert all(sum(len(g) for g in b) <= 4 for b in batches)
    for b in batches:  # within a batch, no context is prefilled twice
        keys = [tuple(sequences[g[0]][: starts[g[0]] - 1]) for g in b]
        assert len(keys) == len(set(keys))


def test_real_model_multiple_choice_scores_equal_the_full_forward(smollm2, smollm2_decoder, float32_parity):
    tok = smollm2.tokenizer
    sequences, starts = [], []
    for question, options in [("What is 7 + 5?", ["12", "13", "75"]), ("Name a colour.", ["red", "table"])]:
        context = tok.encode(f"Question: {question}\nAnswer:")
        for option in options:
            sequences.append(context + tok.encode(f" {option}"))
            starts.append(len(context))
    scored = smollm2_decoder.score(sequences, starts)
    _check(smollm2.params, smollm2.config, sequences, starts, scored, float32_parity)
    with pytest.raises(ValueError, match="sequence 1: start 0"):
        smollm2_decoder.score([[1, 2], [1, 2]], [1, 0])
