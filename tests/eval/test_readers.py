"""Readers (Parquet beside JSONL) and few-shot retrievers (BM25-nearest against a hand-computed Lucene BM25,
seeded random), on fresh random data."""

import dataclasses
import json
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from intern_jax.eval import tasks
from intern_jax.eval.config import DatasetConfig, FewShotConfig, InferConfig, PromptConfig, ReaderConfig

WORDS = "cat dog fish bird red blue green tall small river hill moon sun".split()


def random_rows(rng, n):
    return [{"question": " ".join(rng.choice(WORDS, rng.integers(2, 7))), "choices": [f"o{j}" for j in range(3)],
             "answer": int(rng.integers(0, 3))} for _ in range(n)]


def test_a_parquet_file_reads_the_same_items_as_its_jsonl(tmp_path, rng):
    rows = random_rows(rng, 12)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    jsonl = tasks.read_items(ReaderConfig(path=str(tmp_path / "d.jsonl"), options="choices"), True)
    parquet = tasks.read_items(ReaderConfig(path=str(tmp_path / "d.parquet"), format="parquet", options="choices"),
                               True)
    assert parquet == jsonl and len(parquet) == 12
    pq.write_table(pa.Table.from_pylist([{"question": "x", "answer": 0}] * 3), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet:row 1: missing field 'choices'"):
        tasks.read_items(ReaderConfig(path=str(tmp_path / "bad.parquet"), format="parquet", options="choices"), True)
    (tmp_path / "not.parquet").write_text("hello")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        tasks.read_items(ReaderConfig(path=str(tmp_path / "not.parquet"), format="parquet"), False)


def lucene_bm25(query: list[str], docs: list[list[str]], k1=1.5, b=0.75) -> list[float]:
    """Okapi BM25 as Lucene scores it: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b dl/avgdl)),
    summed over the query's words (a repeated word counts each time, as a query of repeated clauses does)."""
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    scores = []
    for doc in docs:
        s = 0.0
        for term in query:
            df = sum(term in d for d in docs)
            tf = doc.count(term)
            if df and tf:
                s += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(s)
    return scores


def test_bm25_fewshot_picks_the_nearest_items_by_lucene_bm25_never_the_item_itself(tmp_path, rng):
    rows = random_rows(rng, 15)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DatasetConfig(name="d", reader=ReaderConfig(path=str(path), options="choices"),
                        prompt=PromptConfig(template="Q: {question}\nA:"), infer=InferConfig(mode="ll"),
                        fewshot=FewShotConfig(mode="bm25", k=3))
    items = tasks.read_items(cfg.reader, True)
    plan = tasks.fewshot_plan(cfg, items, items, same_pool=True)
    docs = [re.findall(r"\w+", f"Q: {r['question']}\nA:".lower()) for r in rows]
    for i, examples in enumerate(plan):
        scores = lucene_bm25(docs[i], docs)
        picked = [next(j for j, it in enumerate(items) if it is e) for e in examples]
        assert i not in picked and len(picked) == 3
        # best first; every item left out scores no higher than the last one picked
        assert all(scores[a] >= scores[b] - 1e-4 for a, b in zip(picked, picked[1:]))
        rest = [j for j in range(len(rows)) if j != i and j not in picked]
        assert all(scores[j] <= scores[picked[-1]] + 1e-4 for j in rest), (i, picked, scores)
    assert tasks.fewshot_plan(cfg, items, items, same_pool=True) == plan  # deterministic
    # a held-out pool: the item itself may be an example (it is not the item being asked)
    near = tasks.bm25_neighbours(["red cat"], ["blue dog", "red cat", "red"], 2, exclude_self=False)
    assert near == [[1, 2]]


def test_random_fewshot_is_seeded_and_the_plan_follows_the_config(tmp_path, rng):
    rows = random_rows(rng, 10)
    items = [{**r, "options": r["choices"], "reference": r["answer"]} for r in rows]
    cfg = DatasetConfig(name="d", reader=ReaderConfig(path="unused", options="choices"),
                        prompt=PromptConfig(template="{question}"), fewshot=FewShotConfig(mode="random", k=2, seed=3))
    plan = tasks.fewshot_plan(cfg, items, items, True)
    assert plan == tasks.fewshot_plan(cfg, items, items, True)
    assert all(len(p) == 2 and items[n] not in p for n, p in enumerate(plan) if items.count(items[n]) == 1)
    other = dataclasses.replace(cfg, fewshot=FewShotConfig(mode="random", k=2, seed=4))
    assert tasks.fewshot_plan(other, items, items, True) != plan
