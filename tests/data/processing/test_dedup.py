"""Dedup: exact duplicates always go, near-duplicates mostly, shared boilerplate stays.

The reference is this file's own word 5-gram shingler and all-pairs Jaccard (``reference_jaccard``), which
shares no code with ``dedup.shingles`` / ``dedup.jaccard`` / MinHash.
"""

import random

import numpy as np

from intern_jax.data.processing import dedup
from intern_jax.data.processing.config import DedupConfig
from intern_jax.data.processing.documents import StageStats

VOCAB = [f"w{i}" for i in range(5000)]


def _doc(rng, n=300):
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def reference_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Lower-cased whitespace-word n-grams, as tuples (the texts here are ASCII words and spaces)."""
    ws = text.lower().split()
    return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def reference_jaccard(a: str, b: str) -> float:
    sa, sb = reference_shingles(a), reference_shingles(b)
    return len(sa & sb) / len(sa | sb)


def _records(texts, cfg):
    return [dedup.DedupRecord(f"d{i:05d}", dedup.content_hash(t), dedup.minhash_signature(t, cfg), len(t))
            for i, t in enumerate(texts)]


def _run(texts, cfg):
    exact, near = StageStats("dedup_exact"), StageStats("dedup_near")
    return dedup.find_duplicates(_records(texts, cfg), cfg, exact, near), exact, near


def test_library_jaccard_equals_the_independent_shingler(seed):
    rng = random.Random(seed)
    for _ in range(20):  # b: some words replaced, some upper-cased, double spaces
        a = _doc(rng, rng.randint(5, 80))
        words = a.split()
        for i in rng.sample(range(len(words)), rng.randint(0, len(words) // 3)):
            words[i] = rng.choice(VOCAB)
        b = "  ".join(w.upper() if rng.random() < 0.3 else w for w in words)
        assert dedup.jaccard(a, b) == reference_jaccard(a, b), f"seed {seed}"


def test_minhash_estimate_tracks_brute_force_jaccard(seed):
    rng, cfg = random.Random(seed), DedupConfig(num_perm=256)
    for _ in range(20):
        a = _doc(rng, 200)
        words = a.split()
        for i in rng.sample(range(len(words)), rng.randint(0, 60)):
            words[i] = rng.choice(VOCAB)
        b = " ".join(words)
        est = np.mean(dedup.minhash_signature(a, cfg) == dedup.minhash_signature(b, cfg))
        assert abs(est - reference_jaccard(a, b)) < 0.12, f"seed {seed}"


def test_exact_duplicates_are_always_removed_and_the_first_copy_kept(seed):
    rng, cfg = random.Random(seed), DedupConfig()
    base = [_doc(rng) for _ in range(30)]
    texts = base + [base[i] for i in rng.sample(range(30), 10)]
    dropped, exact, _ = _run(texts, cfg)
    assert set(dropped) == {f"d{i:05d}" for i in range(30, 40)}, f"seed {seed}"
    assert exact.drops == {"exact_duplicate": 10}


def test_near_duplicates_with_a_few_words_changed_are_caught(seed):
    rng, cfg = random.Random(seed), DedupConfig()
    originals = [_doc(rng) for _ in range(150)]
    copies, expected = [], []
    for t in originals:
        words = t.split()
        for i in rng.sample(range(len(words)), 3):  # three words replaced
            words[i] = rng.choice(VOCAB)
        copies.append(" ".join(words))
        expected.append(reference_jaccard(t, copies[-1]))
    assert min(expected) > 0.8  # the pairs really are near-duplicates by the exact measure
    dropped, _, near = _run(originals + copies, cfg)
    caught = sum(f"d{i:05d}" in dropped for i in range(150, 300))
    assert caught >= 0.9 * 150, f"seed {seed}: {caught} of 150"
    assert not any(f"d{i:05d}" in dropped for i in range(150)), f"seed {seed}"  # originals come first and stay


def test_documents_sharing_a_licence_header_are_kept(seed):
    rng, cfg = random.Random(seed), DedupConfig()
    header = ("Licensed under the Apache License, Version 2.0 (the License); you may not use this file except "
              "in compliance with the License. You may obtain a copy of the License at the address below. "
              "Unless required by applicable law or agreed to in writing, software distributed under the "
              "License is distributed on an AS IS BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND. ")
    texts = [header + _doc(rng, 150) for _ in range(40)]
    assert max(reference_jaccard(texts[0], t) for t in texts[1:]) < 0.3
    dropped, _, near = _run(texts, cfg)
    assert dropped == {} and near.docs_out == 40, f"seed {seed}"


# MinHash estimates Jaccard J with standard error sqrt(J(1 - J) / num_perm): 0.029 at J = 0.7 with the
# default 256 permutations. Outside 4 standard errors of the threshold (and never closer than 0.05) every
# decision must be the brute-force one; a fixed 0.05 would fail ~1 run in 7 at 256 permutations (a pair at
# 0.76 estimated below 0.7 was seen), and holds reliably only from ~1300 permutations on.
BAND = max(0.05, 4 * (DedupConfig().threshold * (1 - DedupConfig().threshold) / DedupConfig().num_perm) ** 0.5)


def _corpus_with_pairs_across_the_threshold(rng):
    """75 random documents of 300 words and a copy of each with 4-24 words replaced (Jaccard about
    0.45-0.95, a third of them between 0.6 and 0.8), shuffled, so either copy may come first."""
    originals = [_doc(rng) for _ in range(75)]
    texts = list(originals)
    for t in originals:
        words = t.split()
        for i in rng.sample(range(len(words)), rng.randint(4, 24)):
            words[i] = rng.choice(VOCAB)
        texts.append(" ".join(words))
    rng.shuffle(texts)
    return texts


def brute_force_decisions(texts, threshold, library_dropped):
    """Walk the corpus in order against every kept document (all pairs, reference Jaccard): a document goes
    when some kept one reaches ``threshold``. Within ``BAND`` of it MinHash may go either way, so there the
    library's decision is taken (and the kept set follows it). -> (similarity to the nearest kept document,
    expected drop or None inside the band) per document."""
    shingle_sets = [reference_shingles(t) for t in texts]
    kept, out = [], []
    for i, s in enumerate(shingle_sets):
        best = max((len(s & shingle_sets[j]) / len(s | shingle_sets[j]) for j in kept), default=0.0)
        expected = None if abs(best - threshold) < BAND else best >= threshold
        out.append((best, expected))
        if not (library_dropped(i) if expected is None else expected):
            kept.append(i)
    return out


def test_near_duplicate_drops_match_all_pairs_jaccard_outside_the_threshold_band(seed):
    """~150 documents, pairs from 0.45 to 0.95 similar: every drop decision more than ``BAND`` (4 standard
    errors of the MinHash estimate) away from the threshold is the brute-force one."""
    rng, cfg = random.Random(seed), DedupConfig()
    texts = _corpus_with_pairs_across_the_threshold(rng)
    dropped, _, _ = _run(texts, cfg)
    decisions = brute_force_decisions(texts, cfg.threshold, lambda i: f"d{i:05d}" in dropped)
    similar = [best for best, _ in decisions if 0.6 <= best <= 0.8]
    assert len(similar) >= 15, f"seed {seed}: only {len(similar)} pairs between 0.6 and 0.8"
    wrong = [(i, round(best, 3), expected) for i, (best, expected) in enumerate(decisions)
             if expected is not None and expected != (f"d{i:05d}" in dropped)]
    assert not wrong, f"seed {seed}: (document, Jaccard to nearest kept, brute-force drop) differ: {wrong}"
