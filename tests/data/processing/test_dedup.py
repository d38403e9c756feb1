"""Dedup: exact duplicates always go, near-duplicates mostly, shared boilerplate stays."""

import random

import numpy as np

from intern_jax.data.processing import dedup
from intern_jax.data.processing.config import DedupConfig
from intern_jax.data.processing.documents import StageStats

VOCAB = [f"w{i}" for i in range(5000)]


def _doc(rng, n=300):
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _records(texts, cfg):
    return [dedup.DedupRecord(f"d{i:05d}", dedup.content_hash(t), dedup.minhash_signature(t, cfg), len(t))
            for i, t in enumerate(texts)]


def _run(texts, cfg):
    exact, near = StageStats("dedup_exact"), StageStats("dedup_near")
    return dedup.find_duplicates(_records(texts, cfg), cfg, exact, near), exact, near


def test_minhash_estimate_tracks_brute_force_jaccard():
    rng, cfg = random.Random(), DedupConfig(num_perm=256)
    for _ in range(20):
        a = _doc(rng, 200)
        words = a.split()
        for i in rng.sample(range(len(words)), rng.randint(0, 60)):
            words[i] = rng.choice(VOCAB)
        b = " ".join(words)
        est = np.mean(dedup.minhash_signature(a, cfg) == dedup.minhash_signature(b, cfg))
        assert abs(est - dedup.jaccard(a, b)) < 0.12


def test_exact_duplicates_are_always_removed_and_the_first_copy_kept():
    rng, cfg = random.Random(), DedupConfig()
    base = [_doc(rng) for _ in range(30)]
    texts = base + [base[i] for i in rng.sample(range(30), 10)]
    dropped, exact, _ = _run(texts, cfg)
    assert set(dropped) == {f"d{i:05d}" for i in range(30, 40)}
    assert exact.drops == {"exact_duplicate": 10}


def test_near_duplicates_with_a_few_words_changed_are_caught():
    rng, cfg = random.Random(), DedupConfig()
    originals = [_doc(rng) for _ in range(150)]
    copies, expected = [], []
    for t in originals:
        words = t.split()
        for i in rng.sample(range(len(words)), 3):  # three words replaced
            words[i] = rng.choice(VOCAB)
        copies.append(" ".join(words))
        expected.append(dedup.jaccard(t, copies[-1]))
    assert min(expected) > 0.8  # the pairs really are near-duplicates by the exact measure
    dropped, _, near = _run(originals + copies, cfg)
    caught = sum(f"d{i:05d}" in dropped for i in range(150, 300))
    assert caught >= 0.9 * 150
    assert not any(f"d{i:05d}" in dropped for i in range(150))  # originals come first and stay


def test_documents_sharing_a_licence_header_are_kept():
    rng, cfg = random.Random(), DedupConfig()
    header = ("Licensed under the Apache License, Version 2.0 (the License); you may not use this file except "
              "in compliance with the License. You may obtain a copy of the License at the address below. "
              "Unless required by applicable law or agreed to in writing, software distributed under the "
              "License is distributed on an AS IS BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND. ")
    texts = [header + _doc(rng, 150) for _ in range(40)]
    assert max(dedup.jaccard(texts[0], t) for t in texts[1:]) < 0.3
    dropped, _, near = _run(texts, cfg)
    assert dropped == {} and near.docs_out == 40
