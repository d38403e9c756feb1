"""Contamination: an item counts as contaminated exactly when a 13-word window of it occurs in the corpus;
the run reports the share and the scores on the clean items."""

import json

import pytest

from intern_jax.eval.config import DatasetConfig, InferConfig, PromptConfig, ReaderConfig
from intern_jax.eval.contamination import contaminated, corpus_ngrams
from intern_jax.eval.run import run

WORDS = [f"w{i}" for i in range(40)]


def test_thirteen_shared_words_contaminate_and_twelve_do_not(tmp_path, rng):
    start = int(rng.integers(0, 20))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "Intro. " + " ".join(WORDS[start:start + 13]) + " outro"}) + "\n")
    grams = corpus_ngrams(corpus)
    items = [{"question": " ".join(WORDS[start:start + 13]).upper()},  # case and punctuation do not matter
             {"question": ", ".join(WORDS[start:start + 12]) + " other"},
             {"question": "unrelated", "options": WORDS[start:start + 13]}]  # options count too
    assert contaminated(items, grams) == [True, False, True]
    with pytest.raises(ValueError, match="no such file"):
        corpus_ngrams(tmp_path / "missing.jsonl")


class TableLM:
    name = "table"

    def loglikelihood(self, requests):
        return [(-1.0 if cont.strip() == "right" else -2.0, False) for _, cont in requests]


def test_a_run_reports_the_contaminated_share_and_the_scores_on_clean_items(tmp_path):
    leaked = "the quick brown fox jumps over the lazy dog while the cat sleeps all day long"
    rows = [{"question": leaked, "choices": ["right", "wrong"], "answer": 0},
            {"question": "a fresh question", "choices": ["wrong", "right"], "answer": 0}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "corpus.txt").write_text("Some page. " + leaked + ". More text.")
    cfg = DatasetConfig(name="d", reader=ReaderConfig(path=str(data), options="choices"),
                        prompt=PromptConfig(template="{question}"), infer=InferConfig(mode="ll"))
    (result,) = run([TableLM()], [cfg], tmp_path / "out", contamination=corpus_ngrams(tmp_path / "corpus.txt"))
    assert result["metrics"] == {"acc": 50.0, "acc_norm": 50.0, "contaminated": 50.0, "clean_acc": 0.0,
                                 "clean_acc_norm": 0.0}
    assert result["clean_items"] == 1
    assert "| d |" in (tmp_path / "out" / "summary.md").read_text()
