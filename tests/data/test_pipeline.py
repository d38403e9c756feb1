"""The pretraining pipeline on random token corpora: contract, document splitting, host shards,
mixture shares, exact resume through orbax (in process and with workers), clear errors."""

import contextlib

import numpy as np
import orbax.checkpoint as ocp
import pytest

from intern_jax.checkpoint.run import data_restore_args, data_save_args
from intern_jax.config import ConfigError
from intern_jax.data.packing import PackingStats
from intern_jax.data.pipeline import (
    DataConfig,
    HoldoutSplit,
    IteratorStateMismatch,
    make_eval_batches,
    make_pretrain_iterator,
    write_token_corpus,
)

# Each source draws token ids from its own range, so a token tells which source it came from.
SOURCE_RANGES = {"en": (1000, 2000), "code": (2000, 3000), "math": (3000, 4000)}


def random_documents(rng, count, lo, hi, max_len):
    """Documents with distinct first tokens' pairs (unique with overwhelming probability)."""
    return [rng.integers(lo, hi, int(rng.integers(2, max_len + 1))).astype(np.int32) for _ in range(count)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, seed):
    rng = np.random.default_rng(seed)
    lengths = {"en": 60, "code": 150, "math": 30}
    docs = {name: random_documents(rng, 120, lo, hi, lengths[name]) for name, (lo, hi) in SOURCE_RANGES.items()}
    path = tmp_path_factory.mktemp("corpus")
    manifest = write_token_corpus(path, docs, shards=3)
    return path, docs, manifest


@contextlib.contextmanager
def iterator(cfg, **kw):
    it = make_pretrain_iterator(cfg, **kw)
    try:
        yield it
    finally:
        it.close()


def take(cfg, steps, **kw):
    with iterator(cfg, **kw) as it:
        return [next(it) for _ in range(steps)]


def segments(batches):
    """Token sequence of every packed segment, in order."""
    out = []
    for batch in batches:
        for b in range(batch["tokens"].shape[0]):
            seg = batch["segment_ids"][b]
            for s in range(1, seg.max() + 1):
                out.append(tuple(batch["tokens"][b, seg == s]))
    return out


def check_contract(batch, rows, seq_len):
    seg = batch["segment_ids"]
    for k in ("tokens", "targets", "positions", "segment_ids", "loss_mask"):
        assert batch[k].shape == (rows, seq_len), k
    same_next = np.zeros_like(seg, bool)
    same_next[:, :-1] = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0)
    next_tokens = np.zeros_like(batch["tokens"])
    next_tokens[:, :-1] = batch["tokens"][:, 1:]
    np.testing.assert_array_equal(batch["targets"], np.where(same_next, next_tokens, 0))
    np.testing.assert_array_equal(batch["loss_mask"], same_next.astype(np.float32))
    starts = np.ones_like(seg, bool)
    starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
    expected_positions = np.zeros_like(seg)
    for b in range(rows):
        for t in range(1, seq_len):
            expected_positions[b, t] = 0 if starts[b, t] else expected_positions[b, t - 1] + 1
    np.testing.assert_array_equal(batch["positions"], np.where(seg > 0, expected_positions, 0))
    assert (batch["tokens"][seg == 0] == 0).all()


def test_batches_hold_the_contract_and_long_documents_arrive_as_seq_len_chunks(corpus):
    path, docs, _ = corpus
    seq_len = 48  # shorter than many "code" documents
    cfg = DataConfig(path=str(path), mixture={"code": 1.0}, seq_len=seq_len, batch_size=4, shuffle=False)
    stats = PackingStats()
    batches = take(cfg, 60, process_index=0, process_count=1, stats=stats)
    assert stats.examples > 0 and stats.truncated_examples == 0 and stats.dropped_examples == 0
    for batch in batches:
        check_contract(batch, 4, seq_len)
    expected = {tuple(d[s : s + seq_len]) for d in docs["code"] for s in range(0, len(d), seq_len)}
    assert set(segments(batches)) == expected  # 60 batches cover more than one epoch
    fill = np.mean([(b["segment_ids"] > 0).mean() for b in batches])
    assert fill > 0.8, f"packing leaves {1 - fill:.0%} padding"


def test_hosts_read_disjoint_slices_that_together_cover_the_corpus(corpus):
    path, docs, _ = corpus
    hosts = 3
    cfg = DataConfig(path=str(path), mixture={"en": 1.0}, seq_len=64, batch_size=2 * hosts, seed=3, packing_bins=4)
    seen = []
    for host in range(hosts):
        batches = take(cfg, 25, process_index=host, process_count=hosts)
        assert all(b["tokens"].shape == (2, 64) for b in batches)
        seen.append(set(segments(batches)))
    for i in range(hosts):
        for j in range(i + 1, hosts):
            assert not seen[i] & seen[j], f"hosts {i} and {j} share documents"
    assert set().union(*seen) == {tuple(d) for d in docs["en"]}


def token_shares(batches):
    tokens = np.concatenate([b["tokens"][b["segment_ids"] > 0] for b in batches])
    return {name: np.mean((tokens >= lo) & (tokens < hi)) for name, (lo, hi) in SOURCE_RANGES.items()}


@pytest.mark.parametrize("mixture", [{"en": 0.5, "code": 0.3, "math": 0.2}, {"en": 1.0, "math": 3.0}, {}])
def test_token_shares_follow_the_mixture_weights(corpus, mixture):
    path, _, manifest = corpus
    cfg = DataConfig(path=str(path), mixture=mixture, seq_len=128, batch_size=8, seed=11)
    shares = token_shares(take(cfg, 80, process_index=0, process_count=1))
    weights = mixture or {name: entry["tokens"] for name, entry in manifest["sources"].items()}
    total = sum(weights.values())
    for name in SOURCE_RANGES:
        assert shares[name] == pytest.approx(weights.get(name, 0) / total, abs=0.03), (name, shares)


def test_same_seed_same_batches_and_another_seed_other_batches(corpus):
    path, _, _ = corpus
    cfg = DataConfig(path=str(path), seq_len=64, batch_size=2, seed=5)
    first, again = take(cfg, 3, process_index=0, process_count=1), take(cfg, 3, process_index=0, process_count=1)
    other = take(DataConfig(path=str(path), seq_len=64, batch_size=2, seed=6), 3, process_index=0, process_count=1)
    for a, b in zip(first, again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a["tokens"], c["tokens"]) for a, c in zip(first, other))


def assert_resumes_exactly(cfg, tmp_path, before=3, after=4, **kw):
    with iterator(cfg, process_index=0, process_count=1, **kw) as it:
        for _ in range(before):
            next(it)
        manager = ocp.CheckpointManager(tmp_path / "ckpt")
        manager.save(before, args=ocp.args.Composite(data=data_save_args(it)))
        manager.wait_until_finished()
        reference = [next(it) for _ in range(after)]
    with iterator(cfg, process_index=0, process_count=1, **kw) as it:
        manager.restore(before, args=ocp.args.Composite(data=data_restore_args(it)))
        resumed = [next(it) for _ in range(after)]
    manager.close()
    for a, b in zip(reference, resumed):
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_from_an_orbax_checkpoint_yields_the_uninterrupted_batches(corpus, tmp_path):
    path, _, _ = corpus
    assert_resumes_exactly(DataConfig(path=str(path), seq_len=64, batch_size=4, seed=2, packing_bins=8), tmp_path)


@pytest.mark.slow
def test_resume_with_worker_processes_yields_the_uninterrupted_batches(corpus, tmp_path):
    path, _, _ = corpus
    cfg = DataConfig(path=str(path), seq_len=64, batch_size=4, seed=4, packing_bins=8, num_workers=2)
    assert_resumes_exactly(cfg, tmp_path, stats=PackingStats())  # stats travel to the workers


def test_restoring_a_state_saved_with_another_worker_count_fails_naming_both(corpus, tmp_path):
    path, _, _ = corpus
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    with iterator(DataConfig(path=str(path), seq_len=64, batch_size=2), process_index=0, process_count=1) as it:
        next(it)
        manager.save(1, args=ocp.args.Composite(data=data_save_args(it)))
        manager.wait_until_finished()
    # Made but never advanced: no worker process starts.
    with iterator(DataConfig(path=str(path), seq_len=64, batch_size=2, num_workers=3),
                  process_index=0, process_count=1) as other:
        with pytest.raises(IteratorStateMismatch, match=r"num_workers=0 .*num_workers=3"):
            manager.restore(1, args=ocp.args.Composite(data=data_restore_args(other)))
    manager.close()


def test_bad_settings_fail_with_clear_messages(corpus, tmp_path):
    path, _, _ = corpus
    with pytest.raises(FileNotFoundError, match="manifest.json does not exist"):
        make_pretrain_iterator(DataConfig(path=str(tmp_path)), process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['wiki'\]; the corpus has \['code', 'en', 'math'\]"):
        make_pretrain_iterator(DataConfig(path=str(path), mixture={"wiki": 1.0}), process_index=0, process_count=1)
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by the 4 JAX processes"):
        make_pretrain_iterator(DataConfig(path=str(path), batch_size=6), process_index=0, process_count=4)
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="data.seq_len must be a positive integer"):
            DataConfig(path=str(path), seq_len=bad)
    with pytest.raises(ConfigError, match="weights must be positive"):
        DataConfig(path=str(path), mixture={"en": 0.0})


def test_packing_fills_at_least_95_percent_of_positions_on_a_fixed_corpus(tmp_path):
    """First-fit over 128 bins: 40 batches of 4 x 128 from a fixed corpus (400 documents of 2-60 tokens,
    200 of 2-150, split at the row length) are at least 95% tokens, at most 5% padding. (Filling one row
    at a time gives ~88% here.)"""
    rng = np.random.default_rng(0)
    docs = {"en": random_documents(rng, 400, 1000, 2000, 60), "code": random_documents(rng, 200, 2000, 3000, 150)}
    write_token_corpus(tmp_path, docs, shards=2)
    batches = take(DataConfig(path=str(tmp_path), seq_len=128, batch_size=4), 40)
    filled = float(np.mean([np.mean(b["segment_ids"] != 0) for b in batches]))
    assert filled >= 0.95, f"packing efficiency {filled:.3f}"


def test_data_config_takes_overrides_and_hashes():
    from intern_jax.config import apply_overrides

    cfg = apply_overrides(DataConfig(), ["mixture={'en': 0.7, 'code': 0.3}", "seq_len=128", "shuffle=false"])
    assert cfg.mixture == {"en": 0.7, "code": 0.3} and cfg.seq_len == 128 and cfg.shuffle is False
    assert hash(cfg) == hash(DataConfig(mixture={"code": 0.3, "en": 0.7}, seq_len=128, shuffle=False))
    with pytest.raises(ConfigError, match="valid fields: batch_size, holdout, mixture, num_workers"):
        apply_overrides(cfg, ["batchsize=4"])


@pytest.mark.parametrize("n", [2, 3, 9, 10, 11, 119, 1000])
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.3, 0.5])
def test_holdout_split_partitions_a_source_and_spreads_over_it(n, fraction):
    records = [f"doc{i}" for i in range(n)]
    held = list(HoldoutSplit(records, fraction, heldout=True))
    train = list(HoldoutSplit(records, fraction, heldout=False))
    assert sorted(held + train) == sorted(records) and not set(held) & set(train)
    stride = round(1 / fraction)
    assert len(held) == -(-n // stride) >= 1
    held_index = sorted(records.index(d) for d in held)
    assert held_index[0] == 0 and all(b - a == stride for a, b in zip(held_index, held_index[1:]))
    assert train == [d for d in records if d not in held]  # in order
    with pytest.raises(IndexError):
        HoldoutSplit(records, fraction, heldout=True)[len(held)]


def test_a_source_of_one_document_cannot_be_split():
    with pytest.raises(ValueError, match="none left to train on"):
        HoldoutSplit(["only"], 0.1, heldout=False)


def test_training_never_sees_held_out_documents_and_evaluation_sees_exactly_them(corpus):
    path, docs, _ = corpus
    cfg = DataConfig(path=str(path), seq_len=160, batch_size=4, seed=11, holdout=0.1)
    trained = set(segments(take(cfg, 150)))  # several epochs of every source
    per_source = make_eval_batches(cfg)
    assert sorted(per_source) == sorted(SOURCE_RANGES)
    for name, source_docs in docs.items():
        records = [d for shard in range(3) for d in source_docs[shard::3]]  # write_token_corpus's shard order
        held = {tuple(d) for d in HoldoutSplit(records, 0.1, heldout=True)}
        train = {tuple(d) for d in HoldoutSplit(records, 0.1, heldout=False)}
        for batch in per_source[name]:
            check_contract(batch, 4, 160)
        assert sorted(segments(per_source[name])) == sorted(held)  # each held-out document once
        lo, hi = SOURCE_RANGES[name]
        assert {s for s in trained if lo <= s[0] < hi} == train  # every training document, nothing else

    # two hosts: disjoint halves whose union is the held-out set; at most max_batches each
    halves = [make_eval_batches(cfg, process_index=i, process_count=2) for i in range(2)]
    for name in docs:
        a, b = (segments(h[name]) for h in halves)
        assert not set(a) & set(b) and sorted(a + b) == sorted(segments(per_source[name]))
    assert all(len(v) <= 1 for v in make_eval_batches(cfg, max_batches=1).values())
    with pytest.raises(ValueError, match="set data.holdout"):
        make_eval_batches(DataConfig(path=str(path)))
