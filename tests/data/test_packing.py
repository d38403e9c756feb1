"""pack_examples against brute-force references: first-fit rows, the batch contract, overlong policies."""

from collections import Counter

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.data.contract import CONTRACT_KEYS
from intern_jax.data.packing import PackingStats, pack_examples
from intern_jax.model import internlm2
from intern_jax.testing import fast_jit, random_params, tiny_config


def random_examples(rng, count, max_len, vocab=1000, sft=True):
    examples = []
    for _ in range(count):
        n = int(rng.integers(1, max_len + 1))
        tokens = rng.integers(1, vocab, n).astype(np.int32)
        loss = (rng.random(n) < 0.6).astype(np.float32) if sft else np.ones(n, np.float32)
        examples.append({"tokens": tokens, "token_loss": loss})
    return examples


def pack_list(examples, seq_len, batch_size, **kw):
    return list(pack_examples(grain.MapDataset.source(examples).to_iter_dataset(), seq_len, batch_size, **kw))


def reference_first_fit(lengths, seq_len, bins):
    """Row contents (example indices) of grain-style first fit: flush all bins when one fails to fit."""
    rows, current = [], []
    for i, n in enumerate(lengths):
        fit = next((r for r in current if sum(lengths[j] for j in r) + n <= seq_len), None)
        if fit is None and len(current) < bins:
            fit = []
            current.append(fit)
        if fit is None:
            rows.extend(current)
            fit = []
            current = [fit]
        fit.append(i)
    return rows + current


def segments_of(batch):
    """[(row, segment id, token slice, token_loss-at-targets slice, targets, loss_mask)] per packed example."""
    out = []
    for b in range(batch["tokens"].shape[0]):
        seg = batch["segment_ids"][b]
        for s in np.unique(seg[seg > 0]):
            (idx,) = np.nonzero(seg == s)
            out.append((b, int(s), idx))
    return out


def check_contract(batch, seq_len, batch_size):
    assert set(batch) == set(CONTRACT_KEYS)
    for k in CONTRACT_KEYS:
        assert batch[k].shape == (batch_size, seq_len), k
    assert batch["loss_mask"].dtype == np.float32
    for k in ("tokens", "targets", "positions", "segment_ids"):
        assert batch[k].dtype == np.int32, k
    for b in range(batch_size):
        seg, pos = batch["segment_ids"][b], batch["positions"][b]
        # Segments are contiguous and numbered 1, 2, 3, ... with padding only at the end.
        used = seg[seg > 0]
        assert (np.diff(seg[: len(used)]) >= 0).all() and (seg[len(used):] == 0).all()
        if len(used):
            assert used[0] == 1 and set(np.unique(used)) == set(range(1, used.max() + 1))
        for t in range(seq_len):
            if seg[t] == 0:
                assert batch["tokens"][b, t] == 0 and batch["targets"][b, t] == 0 and pos[t] == 0
                assert batch["loss_mask"][b, t] == 0
                continue
            starts_here = t == 0 or seg[t - 1] != seg[t]
            assert pos[t] == (0 if starts_here else pos[t - 1] + 1)
            last = t == seq_len - 1 or seg[t + 1] != seg[t]
            if last:
                assert batch["targets"][b, t] == 0 and batch["loss_mask"][b, t] == 0
            else:
                assert batch["targets"][b, t] == batch["tokens"][b, t + 1]


@pytest.mark.parametrize("bins", [1, 3, 16])
def test_first_fit_rows_match_brute_force_and_keep_every_token_once(bins, rng):
    seq_len, batch_size = int(rng.integers(16, 40)), 4
    examples = random_examples(rng, 90, seq_len)
    batches = pack_list(examples, seq_len, batch_size, num_packing_bins=bins)
    for batch in batches:
        check_contract(batch, seq_len, batch_size)

    rows = [(batch, b) for batch in batches for b in range(batch_size) if batch["segment_ids"][b].any()]
    expected_rows = reference_first_fit([len(e["tokens"]) for e in examples], seq_len, bins)
    assert len(rows) == len(expected_rows)
    for (batch, b), members in zip(rows, expected_rows):
        seg = batch["segment_ids"][b]
        for s, i in enumerate(members, start=1):
            (idx,) = np.nonzero(seg == s)
            np.testing.assert_array_equal(batch["tokens"][b, idx], examples[i]["tokens"])
            # Targets are the example's next tokens; the loss weight is that of the target token.
            np.testing.assert_array_equal(batch["targets"][b, idx[:-1]], examples[i]["tokens"][1:])
            np.testing.assert_array_equal(batch["loss_mask"][b, idx[:-1]], examples[i]["token_loss"][1:])
        assert seg.max() == len(members)
    # Every token exactly once, and nothing more than padding was added.
    packed = Counter(tuple(batch["tokens"][b, idx]) for batch in batches for b, _, idx in segments_of(batch))
    assert packed == Counter(tuple(e["tokens"]) for e in examples)
    # Only the last batch may hold empty rows.
    assert all(batch["segment_ids"].any(axis=1).all() for batch in batches[:-1])


def test_overlong_examples_are_truncated_or_dropped_and_counted(rng):
    seq_len = 12
    examples = random_examples(rng, 60, 2 * seq_len)
    examples.append({"tokens": np.zeros(0, np.int32), "token_loss": np.zeros(0, np.float32)})
    lengths = np.array([len(e["tokens"]) for e in examples])
    over = lengths > seq_len

    stats = PackingStats()
    batches = pack_list(examples, seq_len, 3, overlong="truncate", stats=stats)
    packed = Counter(tuple(batch["tokens"][b, idx]) for batch in batches for b, _, idx in segments_of(batch))
    assert packed == Counter(tuple(e["tokens"][:seq_len]) for e in examples if len(e["tokens"]))
    assert stats.truncated_examples == over.sum()
    assert stats.truncated_tokens == (lengths[over] - seq_len).sum()
    assert stats.empty_examples == 1 and stats.dropped_examples == 0
    assert stats.examples == (lengths > 0).sum() and stats.tokens == np.minimum(lengths, seq_len).sum()

    stats = PackingStats()
    batches = pack_list(examples, seq_len, 3, overlong="drop", stats=stats)
    packed = Counter(tuple(batch["tokens"][b, idx]) for batch in batches for b, _, idx in segments_of(batch))
    assert packed == Counter(tuple(e["tokens"]) for e in examples if 0 < len(e["tokens"]) <= seq_len)
    assert stats.dropped_examples == over.sum() and stats.dropped_tokens == lengths[over].sum()
    assert stats.truncated_examples == 0


def test_shuffled_rows_are_a_seeded_permutation_of_the_unshuffled_ones(rng):
    examples = random_examples(rng, 50, 20)
    plain = pack_list(examples, 20, 5, num_packing_bins=10)
    shuffled = pack_list(examples, 20, 5, num_packing_bins=10, shuffle_rows=True, seed=7)
    again = pack_list(examples, 20, 5, num_packing_bins=10, shuffle_rows=True, seed=7)
    rows = lambda batches: [tuple(row) for batch in batches for row in batch["tokens"] if row.any()]
    assert rows(shuffled) == rows(again)
    assert Counter(rows(shuffled)) == Counter(rows(plain)) and rows(shuffled) != rows(plain)


def test_missing_token_loss_means_every_token_is_a_target(rng):
    examples = [{"tokens": e["tokens"]} for e in random_examples(rng, 20, 10)]
    for batch in pack_list(examples, 16, 2):
        has_next = np.zeros_like(batch["segment_ids"], bool)
        has_next[:, :-1] = (batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]) & (
            batch["segment_ids"][:, :-1] > 0
        )
        np.testing.assert_array_equal(batch["loss_mask"], has_next.astype(np.float32))


def test_packed_rows_give_each_example_the_loss_it_has_alone(rng):
    """The model sees packed examples as if alone: per-token losses equal those of unpacked forwards."""
    cfg = tiny_config(vocab_size=97, max_position_embeddings=64)
    params = random_params(cfg, seed=int(rng.integers(1 << 30)))
    seq_len = 32
    examples = random_examples(rng, 7, 14, vocab=cfg.vocab_size)
    (batch,) = pack_list(examples, seq_len, 4)

    @fast_jit
    def token_losses(params, batch):
        logits, _ = internlm2.forward(params, batch, cfg)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0] * batch["loss_mask"]

    packed = np.asarray(token_losses(params, {k: jnp.asarray(v) for k, v in batch.items()}))
    alone_batch = {k: np.zeros((len(examples), seq_len), v.dtype) for k, v in batch.items()}
    for i, e in enumerate(examples):
        n = len(e["tokens"])
        alone_batch["tokens"][i, :n] = e["tokens"]
        alone_batch["targets"][i, : n - 1] = e["tokens"][1:]
        alone_batch["loss_mask"][i, : n - 1] = e["token_loss"][1:]
        alone_batch["positions"][i, :n] = np.arange(n)
        alone_batch["segment_ids"][i, :n] = 1
    # Same jitted shapes not needed: one extra compile for the [7, 32] batch.
    alone = np.asarray(token_losses(params, {k: jnp.asarray(v) for k, v in alone_batch.items()}))
    packed_by_example = Counter()
    for b, _, idx in segments_of(batch):
        key = tuple(batch["tokens"][b, idx])
        packed_by_example[key] = packed[b, idx]
    for i, e in enumerate(examples):
        n = len(e["tokens"])
        np.testing.assert_allclose(packed_by_example[tuple(e["tokens"])], alone[i, :n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seq_len=0), "seq_len must be a positive integer"),
        (dict(seq_len=-3), "seq_len must be a positive integer"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(overlong="wrap"), "overlong='wrap' is not a policy"),
    ],
)
def test_bad_packing_arguments_fail_clearly(kwargs, message):
    args = {"seq_len": 8, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        pack_examples(grain.MapDataset.source([]).to_iter_dataset(), **args)


def test_bad_examples_fail_clearly():
    bad = [{"tokens": np.arange(5, dtype=np.int32), "token_loss": np.ones(4, np.float32)}]
    with pytest.raises(ValueError, match="one loss weight per token"):
        pack_list(bad, 8, 1)
    with pytest.raises(ValueError, match="expects dict examples with 'tokens'"):
        pack_list([{"ids": np.arange(3)}], 8, 1)
    with pytest.raises(TypeError, match="grain.MapDataset.source"):
        pack_examples([{"tokens": np.arange(3)}], 8, 1)
