"""Needle in a haystack (seeded generation, placement by depth, scoring, the heatmap), held-out perplexity's
aggregation, summary groups and the summary chart."""

import dataclasses
import json
import math
import re
from pathlib import Path

import matplotlib.image
import pytest

from intern_jax.eval import needle, tasks
from intern_jax.eval.config import DatasetConfig, InferConfig, PromptConfig, ReaderConfig, find_datasets
from intern_jax.eval.run import evaluate_dataset, run
from intern_jax.eval.summary import to_markdown, with_groups

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "eval"


def test_needle_items_are_seeded_and_the_needle_sits_at_its_depth(seed):
    rows = needle.needle_rows(lengths=(60, 150), depths=(0.0, 0.5, 1.0), per_cell=2, seed=seed)
    assert rows == needle.needle_rows(lengths=(60, 150), depths=(0.0, 0.5, 1.0), per_cell=2, seed=seed)
    assert rows != needle.needle_rows(lengths=(60, 150), depths=(0.0, 0.5, 1.0), per_cell=2, seed=seed + 1)
    assert len(rows) == 12
    for row in rows:
        sentences = re.split(r"(?<=\.) ", row["context"])
        where = next(i for i, s in enumerate(sentences) if s.startswith("The secret code of"))
        name = row["question"].removeprefix("What is the secret code of ").removesuffix("?")
        assert sentences[where] == f"The secret code of {name} is {row['answer']}."
        assert abs(where / (len(sentences) - 1) - row["depth"]) <= 0.1
        words = len(row["context"].split())
        assert row["length"] <= words - 7 <= row["length"] + 15
    with pytest.raises(ValueError, match="depths must lie in"):
        needle.needle_rows(depths=(1.5,))


class ShortSightedLM:
    """Finds the code only when the needle is in the first 600 characters of the user message."""

    name = "short"

    def generate_until(self, requests):
        out = []
        for prompt, _, _ in requests:
            text = prompt[-1]["content"]
            match = re.search(r"secret code of [\w ]+ is (\d{7})", text[:600])
            out.append(f"The code is {match.group(1)}." if match else "I do not know.")
        return out


def test_needle_set_scores_exact_match_and_draws_the_depth_by_length_heatmap(tmp_path):
    (cfg,) = find_datasets("needle", CONFIG_DIR)
    cfg = dataclasses.replace(cfg, reader=dataclasses.replace(
        cfg.reader, generate_args={"lengths": (40, 200), "depths": (0.0, 1.0), "per_cell": 2, "seed": 1}))
    results = run([ShortSightedLM()], [cfg], tmp_path)
    # depth 0 is always found; depth 1 only in the 40-word haystacks (about 300 characters, not 1200)
    assert results[0]["metrics"] == {"exact_match": 75.0}
    image = matplotlib.image.imread(tmp_path / "plots" / "short" / "needle_heatmap.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    records = [json.loads(line) for line in (tmp_path / "predictions" / "short" / "needle.jsonl").open()]
    assert [r["correct"] for r in records] == [True, True, True, True, True, True, False, False]


class RollingLM:
    name = "rolling"

    def __init__(self, ll, tokens):
        self.ll, self.tokens = ll, tokens

    def loglikelihood_rolling(self, texts):
        return [self.ll[t] for t in texts]

    def token_count(self, text):
        return self.tokens[text]


def test_perplexity_is_per_token_over_the_whole_set_and_bits_per_byte_per_byte(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps({"text": "ab cd"}) + "\n" + json.dumps({"text": "ééé"}) + "\n")
    cfg = DatasetConfig(name="h", reader=ReaderConfig(path=str(path), answer="text"),
                        prompt=PromptConfig(template="{text}"), infer=InferConfig(mode="perplexity"))
    model = RollingLM({"ab cd": -6.0, "ééé": -3.0}, {"ab cd": 2, "ééé": 4})
    result, records = evaluate_dataset(model, cfg)
    assert result["metrics"]["ppl"] == round(math.exp(9.0 / 6), 4)
    assert result["metrics"]["bits_per_byte"] == round(9.0 / math.log(2) / (5 + 6), 4)
    assert [r["tokens"] for r in records] == [2, 4]
    (shipped,) = find_datasets("heldout_ppl", CONFIG_DIR)
    assert len(tasks.read_items(shipped.reader, False)) == 12


def test_summary_groups_average_each_datasets_first_metric_and_name_unknown_datasets(tmp_path):
    results = [
        {"model": "m1", "dataset": "a", "version": "v", "mode": "ll", "metrics": {"acc": 50.0, "acc_norm": 90.0}},
        {"model": "m1", "dataset": "b", "version": "v", "mode": "gen", "metrics": {"exact_match": 20.0}},
        {"model": "m2", "dataset": "a", "version": "v", "mode": "ll", "metrics": {"acc": 10.0, "acc_norm": 0.0}},
    ]
    grouped = with_groups(results, {"avg": ["a", "b"]})
    assert grouped[-1] == {"model": "m1", "dataset": "avg", "version": "-", "mode": "average",
                           "metrics": {"naive_average": 35.0}}
    assert len(grouped) == 4  # m2 lacks b: no group row for it
    assert "| avg | - | naive_average | average | 35.00 | - |" in to_markdown(grouped, ["m1", "m2"])
    with pytest.raises(ValueError, match="not evaluated: c"):
        with_groups(results, {"avg": ["a", "c"]})
