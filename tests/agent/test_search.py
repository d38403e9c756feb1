"""Document search: BM25 scores equal a hand computation of Okapi BM25, passages keep their document's id,
JSONL files and processed corpus directories both index, bad sources and arguments are named."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter

import pytest

from intern_jax.agent.search import DocumentSearch
from intern_jax.agent.tools import ToolRegistry

VOCAB = ("river mountain people history garden machine language music winter station between quickly "
         "because another without morning science window letter market bridge forest travel simple").split()


def okapi_bm25(docs: list[str], query: str, k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 as the textbook writes it, idf = ln(1 + (N - n + 0.5) / (n + 0.5)); words are \\w+ lower-cased."""
    tokenized = [re.findall(r"\w+", d.lower()) for d in docs]
    n_docs, avgdl = len(docs), sum(map(len, tokenized)) / len(docs)
    counts = [Counter(t) for t in tokenized]
    scores = []
    for tokens, tf in zip(tokenized, counts, strict=True):
        score = 0.0
        for term in re.findall(r"\w+", query.lower()):
            n = sum(term in c for c in counts)
            idf = math.log(1 + (n_docs - n + 0.5) / (n + 0.5))
            score += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * len(tokens) / avgdl))
        scores.append(score)
    return scores


def test_scores_of_a_small_corpus_are_the_okapi_formula_worked_by_hand():
    search = DocumentSearch([("d1", "cat sat"), ("d2", "dog sat"), ("d3", "Cat cat dog")])
    # N = 3, avgdl = 7/3, "cat" in 2 documents: idf = ln(1 + 1.5 / 2.5) = ln 1.6
    # d1: tf 1, dl 2 -> ln 1.6 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 2 / (7/3))) = 0.502294
    # d3: tf 2, dl 3 -> ln 1.6 * 5.0 / (2 + 1.5 * (0.25 + 0.75 * 3 / (7/3))) = 0.614958
    hits = search.top("cat", top_k=3)
    assert [(h["id"], round(h["score"], 6)) for h in hits] == [("d3", 0.614958), ("d1", 0.502294)]


def test_scores_and_ranking_match_the_reference_on_a_random_corpus(rng):
    r = random.Random(int(rng.integers(1 << 30)))
    docs = [" ".join(r.choice(VOCAB) for _ in range(r.randint(3, 40))) for _ in range(30)]
    search = DocumentSearch([(f"doc{i}", d) for i, d in enumerate(docs)], passage_words=1000)
    for _ in range(5):
        query = " ".join(r.sample(VOCAB, r.randint(1, 4)))
        expected = okapi_bm25(docs, query)
        assert search.scores(query).tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
        hits = search.top(query, top_k=10)
        want = sorted((s for s in expected if s > 0), reverse=True)[:10]
        assert [h["score"] for h in hits] == pytest.approx(want, rel=1e-9)
        assert all(h["score"] == pytest.approx(expected[int(h["id"][3:])]) for h in hits)
        assert all(h["text"] == docs[int(h["id"][3:])] for h in hits)


def test_long_documents_are_cut_into_passages_that_keep_the_document_id():
    text = "Alpha beta, gamma.\n\nDelta epsilon zeta! Eta theta."
    search = DocumentSearch([("long", text), ("short", "iota kappa")], passage_words=3)
    assert search.passages == [("long", 0, "Alpha beta, gamma"), ("long", 1, "Delta epsilon zeta"),
                               ("long", 2, "Eta theta"), ("short", 0, "iota kappa")]
    assert search.top("epsilon")[0] | {"score": 0} == {"id": "long", "passage": 1, "score": 0,
                                                       "text": "Delta epsilon zeta"}


def test_han_characters_are_terms_of_their_own():
    search = DocumentSearch([("zh", "北京是中国的首都"), ("en", "Paris is the capital")])
    assert [h["id"] for h in search.top("首都")] == ["zh"]


def test_a_jsonl_file_indexes_with_its_ids_or_line_numbers(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "faq-7", "text": "Reset the router by holding the button."}) + "\n\n"
                    + json.dumps({"text": "The warranty lasts two years."}) + "\n")
    search = DocumentSearch(path)
    assert search.top("warranty")[0]["id"] == "3" and search.top("router button")[0]["id"] == "faq-7"


@pytest.mark.parametrize("line, named", [("{broken", "docs.jsonl:2 is not JSON"),
                                         ('{"body": "x"}', "docs.jsonl:2 has no string field 'text'")])
def test_a_bad_jsonl_line_is_named(tmp_path, line, named):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=re.escape(named)):
        DocumentSearch(path)


def test_a_processed_corpus_directory_indexes_the_kept_documents(tmp_path):
    from intern_jax.data.processing import runner
    from intern_jax.data.processing.config import ProcessingConfig

    r = random.Random(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    texts = [" ".join(r.choice(VOCAB) for _ in range(80)) + "." for _ in range(5)]
    texts[3] += " The zebra crossing is near the bridge."
    with open(raw / "part.jsonl", "w") as f:
        for t in [*texts, texts[0]]:  # the repeated document is dropped by deduplication
            f.write(json.dumps({"text": t}) + "\n")
    runner.clean_corpus([raw], tmp_path / "out", ProcessingConfig(num_workers=1), progress=False)
    kept = list(runner.kept_documents(tmp_path / "out"))
    search = DocumentSearch(tmp_path / "out")
    assert len(search) == len(kept) == 5
    hit = search.top("zebra")
    assert len(hit) == 1 and hit[0]["id"] == kept[3].id and "zebra crossing" in hit[0]["text"]


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="not a processed corpus"):
        DocumentSearch(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DocumentSearch(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no text to index"):
        DocumentSearch([("empty", " ... ")])


def test_the_search_tool_returns_passages_and_names_bad_arguments():
    registry = ToolRegistry()
    registry.add_toolkit(DocumentSearch([("a", "the cat sat on the mat"), ("b", "a dog in the fog")]))
    assert registry.names == ["search"]
    assert registry.schemas[0]["function"]["parameters"]["required"] == ["query"]
    result = json.loads(registry.call("search", {"query": "cat mat", "top_k": 1}).content)
    assert [(h["id"], h["passage"], h["text"]) for h in result] == [("a", 0, "the cat sat on the mat")]
    assert "no passage contains" in registry.call("search", {"query": "unicorn"}).content
    assert "top_k must be between 1 and 20" in registry.call("search", {"query": "cat", "top_k": 0}).error
    assert "'top_k'" in registry.call("search", {"query": "cat", "top_k": "2"}).error
    assert "no words" in registry.call("search", {"query": "?!"}).error
