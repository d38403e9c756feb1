"""Judge mode: ratings and verdicts parsed from judgements, the position swap of pairwise judging, and the
embedded SmolLM2 judging its own answers end to end (predictions, results, summary)."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from intern_jax.config import ConfigError
from intern_jax.eval import DecoderLM, InferConfig, JudgeConfig, load_dataset_config, run
from intern_jax.eval.judge import compare_answers, parse_rating, parse_verdict, rate_answers

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "eval"


class ScriptedJudge:
    """A judge whose verdict is a function of the prompt it reads (the synthetic models of these tests)."""

    name = "scripted"

    def __init__(self, verdict):
        self.verdict, self.prompts = verdict, []

    def generate_until(self, requests):
        self.prompts += [messages[-1]["content"] for messages, _, _ in requests]
        return [self.verdict(messages[-1]["content"]) for messages, _, _ in requests]


def _answers(outputs):
    return [{"id": n, "rotation": 0, "prompt": f"question {n}", "reference": "", "output": o}
            for n, o in enumerate(outputs)]


@pytest.mark.parametrize("text, rating", [
    ("Good answer. Rating: [[8]]", 8.0), ("[[10]]", 10.0), ("Rating: [[7.5]]", 7.5), ("Rating: 3", 3.0),
    ("[[1]] is the lowest", 1.0),
    ("no rating at all", None), ("Rating: [[0]]", None), ("Rating: [[11]]", None), ("[[-2]]", None), ("", None),
])
def test_rating_is_parsed_and_out_of_range_counts_as_unparsed(text, rating):
    assert parse_rating(text) == rating


@pytest.mark.parametrize("text, verdict", [
    ("A is clearer. [[A]]", "A"), ("[[ B ]]", "B"), ("Equal. [[C]]", "C"), ("both [[A]] and [[B]]", None),
    ("Assistant A", None), ("[A]", None),
])
def test_verdict_is_parsed_and_ambiguity_counts_as_unparsed(text, verdict):
    assert parse_verdict(text) == verdict


def _cfg(mode):
    cfg = load_dataset_config(CONFIGS / f"judge_{mode}.py")
    return dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, max_tokens=12),
                               judge=dataclasses.replace(cfg.judge, max_tokens=16))


def test_single_grading_averages_parsed_ratings_and_counts_the_rest():
    replies = iter(["Rating: [[8]]", "I cannot decide.", "Rating: [[11]]", "Fine. [[4]]"])
    judge = ScriptedJudge(lambda prompt: next(replies))
    records = _answers(["a", "b", "c", "d"])
    metrics = rate_answers(judge, _cfg("single"), records)
    assert metrics == {"rating": 6.0, "unparsed": 2.0}
    assert [r["rating"] for r in records] == [8.0, None, None, 4.0]
    assert all("question" in p and "[The Start of Assistant's Answer]" in p for p in judge.prompts)
    assert rate_answers(ScriptedJudge(lambda p: "no idea"), _cfg("single"), _answers(["a"])) == {"unparsed": 1.0}


def _answer(prompt, which):
    return re.search(rf"\[The Start of Assistant {which}'s Answer\]\n(.*?)\n\[The End", prompt, re.S).group(1)


def test_pairwise_swaps_positions_so_a_position_bias_wins_nothing():
    mine, base = _answers(["a long, helpful answer", "another long answer"]), _answers(["short", "tiny"])
    always_a = ScriptedJudge(lambda prompt: "[[A]]")
    assert compare_answers(always_a, _cfg("pairwise"), mine, base, "base") == {"win_rate_vs_base": 50.0,
                                                                               "unparsed": 0.0}
    assert [r["pairwise"]["verdicts"] for r in mine] == [["win", "loss"]] * 2
    # each item is asked both ways: once with the model's answer as A, once as B
    assert [_answer(p, "A") for p in always_a.prompts] == ["a long, helpful answer", "short", "another long answer",
                                                          "tiny"]
    longer = ScriptedJudge(lambda p: "[[A]]" if len(_answer(p, "A")) > len(_answer(p, "B")) else "[[B]]")
    assert compare_answers(longer, _cfg("pairwise"), mine, base, "base")["win_rate_vs_base"] == 100.0
    assert compare_answers(longer, _cfg("pairwise"), base, mine, "other")["win_rate_vs_other"] == 0.0
    tie_or_nothing = ScriptedJudge(lambda p: "[[C]]" if "tiny" in p else "undecided")
    assert compare_answers(tie_or_nothing, _cfg("pairwise"), mine, base, "base") == {"win_rate_vs_base": 50.0,
                                                                                     "unparsed": 2.0}


def test_judged_sets_need_a_judge_generated_answers_and_two_models_for_pairwise(tmp_path):
    with pytest.raises(ConfigError, match="infer.mode='gen'"):
        dataclasses.replace(_cfg("single"), infer=InferConfig(mode="ll"), reader=dataclasses.replace(
            _cfg("single").reader, options="choices"))
    with pytest.raises(ConfigError, match="judge.mode"):
        JudgeConfig(mode="elo")
    model = ScriptedJudge(lambda p: "")
    with pytest.raises(ValueError, match="--judge-model PATH or --judge-url URL"):
        run([model], [_cfg("single")], tmp_path)
    with pytest.raises(ValueError, match="at least two models"):
        run([model], [_cfg("pairwise")], tmp_path, judge=model)


def test_run_judges_every_model_and_the_summary_shows_ratings_win_rates_and_unparsed(tmp_path):
    answers = {"terse": "ok", "verbose": "a long and careful answer"}

    class Answering(ScriptedJudge):
        def __init__(self, name):
            super().__init__(lambda prompt: answers[name])
            self.name = name

    def judge_reply(prompt):
        if "Assistant A's Answer" in prompt:  # pairwise: the longer answer wins
            return "[[A]]" if len(_answer(prompt, "A")) > len(_answer(prompt, "B")) else "[[B]]"
        return "Rating: [[9]]" if "careful" in prompt else "Rating: [[12]]"

    judge = ScriptedJudge(judge_reply)
    judge.name = "judge"
    models = [Answering("terse"), Answering("verbose")]
    results = run(models, [_cfg("single"), _cfg("pairwise")], tmp_path, limit=3, judge=judge)
    metrics = {(r["model"], r["dataset"]): r["metrics"] for r in results}
    assert metrics[("terse", "judge_single")] == {"unparsed": 3.0}  # 12 is out of range: no rating, counted
    assert metrics[("verbose", "judge_single")] == {"rating": 9.0, "unparsed": 0.0}
    assert metrics[("terse", "judge_pairwise")] == {}  # the base
    assert metrics[("verbose", "judge_pairwise")] == {"win_rate_vs_terse": 100.0, "unparsed": 0.0}
    summary = (tmp_path / "summary.md").read_text()
    single, pairwise = _cfg("single").version, _cfg("pairwise").version
    assert f"| judge_single | {single} | rating | judge-single | - | 9.00 |" in summary
    assert f"| judge_single | {single} | unparsed | judge-single | 3.00 | 0.00 |" in summary
    assert f"| judge_pairwise | {pairwise} | win_rate_vs_terse | judge-pairwise | - | 100.00 |" in summary
    record = json.loads((tmp_path / "predictions" / "verbose" / "judge_pairwise.jsonl").read_text().splitlines()[0])
    assert record["pairwise"]["verdicts"] == ["win", "win"] and record["output"] == answers["verbose"]


def test_embedded_model_as_judge_rates_answers_or_counts_them_unparsed(smollm2_decoder):
    judge = DecoderLM(smollm2_decoder, "judge", batch_size=4)
    records = [{"id": 0, "rotation": 0, "prompt": "Why do we wear coats in winter?", "reference": "",
                "output": "Coats keep us warm when the air is cold."},
               {"id": 1, "rotation": 0, "prompt": "Name a colour.", "reference": "", "output": "Table."}]
    metrics = rate_answers(judge, _cfg("single"), records)
    assert all(r["judgement"] for r in records)
    ratings = [r["rating"] for r in records]
    assert ratings == [parse_rating(r["judgement"]) for r in records]
    assert all(r is None or 1 <= r <= 10 for r in ratings)
    rated = [r for r in ratings if r is not None]
    assert metrics == {**({"rating": round(sum(rated) / len(rated), 2)} if rated else {}),
                       "unparsed": float(len(ratings) - len(rated))}
