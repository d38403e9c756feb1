"""Tasks on hand-built cases: acc / acc_norm, PPL choice, CircularEval, post-processors, evaluators, few-shot,
the version hash, the reader's errors and the summary table. The models here are fakes answering from tables."""

import dataclasses
import json

import pytest

from intern_jax.eval import tasks
from intern_jax.eval.config import (
    DatasetConfig,
    EvaluatorConfig,
    FewShotConfig,
    InferConfig,
    PostprocessConfig,
    PromptConfig,
    ReaderConfig,
    find_datasets,
)
from intern_jax.eval.run import evaluate_dataset
from intern_jax.eval.summary import to_csv, to_markdown


class TableLM:
    """Log-likelihoods looked up by continuation text; generations from a function of the prompt."""

    name = "table"

    def __init__(self, ll=None, answer=None):
        self.ll, self.answer = ll or {}, answer
        self.requests = []

    def loglikelihood(self, requests):
        self.requests += requests
        return [(self.ll[cont.strip()], False) for _, cont in requests]

    def loglikelihood_rolling(self, texts):
        return [self.ll[t.rsplit(" ", 1)[-1]] * self.token_count(t) for t in texts]

    def generate_until(self, requests):
        return [self.answer(prompt) for prompt, _, _ in requests]

    def token_count(self, text):
        return len(text.split())


def mc_config(tmp_path, rows, template="Q: {question}\nA:", **infer):
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return DatasetConfig(name="mc", reader=ReaderConfig(path=str(path), options="choices"),
                         prompt=PromptConfig(template=template), infer=InferConfig(**infer))


LISTED = "Q: {question}\n{options}\nA:"


def test_acc_takes_the_highest_loglikelihood_and_acc_norm_divides_by_bytes(tmp_path):
    # " a": 2 bytes, " bbbbbbbb": 9 bytes; raw -3 beats -4, per byte -4/9 beats -3/2
    cfg = mc_config(tmp_path, [{"question": "x", "choices": ["a", "bbbbbbbb"], "answer": 1}], mode="ll")
    model = TableLM({"a": -3.0, "bbbbbbbb": -4.0})
    assert evaluate_dataset(model, cfg)[0]["metrics"] == {"acc": 0.0, "acc_norm": 100.0}
    assert model.requests == [("Q: x\nA:", " a"), ("Q: x\nA:", " bbbbbbbb")]


def test_ppl_mode_picks_the_option_with_the_lowest_perplexity(tmp_path):
    cfg = mc_config(tmp_path, [{"question": "x", "choices": ["p", "q", "r"], "answer": "C"}], mode="ppl")
    result, records = evaluate_dataset(TableLM({"p": -2.0, "q": -3.0, "r": -1.0}), cfg)
    assert records[0]["prediction"] == 2 and result["metrics"] == {"acc": 100.0}


def test_circular_eval_of_a_model_that_always_answers_a_scores_zero(tmp_path):
    rows = [{"question": f"q{i}", "choices": ["w", "x", "y", "z"], "answer": i % 4} for i in range(8)]
    cfg = dataclasses.replace(mc_config(tmp_path, rows, LISTED, mode="gen", circular=True),
                              postprocess=PostprocessConfig(kind="option_letter"))
    result, records = evaluate_dataset(TableLM(answer=lambda prompt: "A"), cfg)
    assert result["metrics"] == {"acc": 25.0, "circular_acc": 0.0}
    assert len(records) == 32 and sorted({r["rotation"] for r in records}) == [0, 1, 2, 3]


def test_circular_eval_counts_an_item_only_when_every_rotation_is_right(tmp_path):
    # the model knows the answer "y" for item 0 wherever it stands; for item 1 it always picks the first option,
    # which is right only in the rotation where the answer comes first
    rows = [{"question": "knows", "choices": ["w", "x", "y"], "answer": 2},
            {"question": "first", "choices": ["w", "x", "y"], "answer": 0}]
    cfg = dataclasses.replace(mc_config(tmp_path, rows, LISTED, mode="gen", circular=True),
                              postprocess=PostprocessConfig(kind="option_letter"))

    def answer(prompt):
        lines = dict(line.split(". ", 1) for line in prompt.splitlines() if ". " in line)
        return next(k for k, v in lines.items() if v == "y") if "knows" in prompt else "A"

    result, _ = evaluate_dataset(TableLM(answer=answer), cfg)
    assert result["metrics"] == {"acc": 100.0, "circular_acc": 50.0}


def test_circular_eval_is_refused_where_the_prompt_shows_no_order(tmp_path):
    rows = [{"question": "x", "choices": ["a", "b"], "answer": 0}]
    with pytest.raises(ValueError, match="every rotation scores the same"):
        mc_config(tmp_path, rows, mode="ll", circular=True)
    assert mc_config(tmp_path, rows, LISTED, mode="ll", circular=True).infer.circular
    letter = dataclasses.replace(mc_config(tmp_path, rows, mode="ll"),
                                 prompt=PromptConfig("Q", continuation=" {label}"))
    assert dataclasses.replace(letter, infer=InferConfig(mode="ll", circular=True)).infer.circular


def test_rotations_keep_the_answer_with_its_option():
    item = {"options": ["a", "b", "c", "d"], "reference": 1}
    for r in tasks.rotations(item):
        assert r["options"][r["reference"]] == "b"


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), (" (C) because", "C"), ("The answer is D.", "D"), ("answer: a", "A"), ("I think B. yes", "B"),
    ("none of these", ""),
])
def test_option_letter_finds_the_named_option(text, letter):
    assert tasks.option_letter(text, 4) == letter


def test_last_number_regex_and_numeric_match():
    assert tasks.last_number("3 apples and 1,250.5 pears.") == "1250.5"
    assert tasks.last_number("It is -7.") == "-7"
    assert tasks.last_number("no digits") == ""
    assert tasks.postprocess(PostprocessConfig(kind="regex", pattern=r"#### (\S+)"), "work\n#### 42") == "42"
    assert tasks.postprocess(PostprocessConfig(kind="regex", pattern=r"\d+"), "a 12 b") == "12"
    assert tasks.numeric_equal("42.0", "42", 1e-6) and not tasks.numeric_equal("41", "42", 1e-6)
    assert not tasks.numeric_equal("", "42", 1e-6)


def test_gen_task_exact_and_numeric_match(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "1+1", "answer": "2"}\n{"question": "name", "answer": "Paris"}\n')
    base = DatasetConfig(name="qa", reader=ReaderConfig(path=str(path)), prompt=PromptConfig("{question} =",
                         continuation=" {answer}"), infer=InferConfig(mode="gen"))
    replies = {"1+1 =": " so 2.0", "name =": " paris "}
    model = TableLM(answer=lambda p: replies[p])
    numeric = dataclasses.replace(base, postprocess=PostprocessConfig(kind="last_number"),
                                  evaluator=EvaluatorConfig(metric="numeric_match"))
    assert evaluate_dataset(model, numeric)[0]["metrics"] == {"numeric_match": 50.0}
    exact = dataclasses.replace(base, evaluator=EvaluatorConfig(metric="exact_match"))
    assert evaluate_dataset(model, exact)[0]["metrics"] == {"exact_match": 50.0}


def test_fewshot_fixed_and_seeded_random_never_show_the_item_itself(tmp_path):
    pool = [{"question": str(i), "reference": str(i)} for i in range(10)]
    fixed = tasks.fewshot_examples(FewShotConfig(mode="fixed", indices=(0, 1, 2)), pool, 1, True)
    assert [e["question"] for e in fixed] == ["0", "2"]
    random_cfg = FewShotConfig(mode="random", k=3, seed=5)
    a = tasks.fewshot_examples(random_cfg, pool, 4, True)
    assert a == tasks.fewshot_examples(random_cfg, pool, 4, True) and len(a) == 3
    assert all(e["question"] != "4" for e in a)
    assert a != tasks.fewshot_examples(dataclasses.replace(random_cfg, seed=6), pool, 4, True)


def test_version_hash_follows_the_prompt_settings_not_the_data_path(tmp_path):
    cfg = mc_config(tmp_path, [{"question": "x", "choices": ["a", "b"], "answer": 0}], mode="ll")
    assert len(cfg.version) == 6
    assert dataclasses.replace(cfg, reader=dataclasses.replace(cfg.reader, path="elsewhere.jsonl"),
                               name="renamed").version == cfg.version
    assert dataclasses.replace(cfg, prompt=PromptConfig(template="Question: {question}\nAnswer:")).version \
        != cfg.version
    assert dataclasses.replace(cfg, fewshot=FewShotConfig(mode="random", k=2)).version != cfg.version
    assert dataclasses.replace(cfg, infer=InferConfig(mode="ppl")).version != cfg.version


def test_a_missing_field_names_itself_and_the_line(tmp_path):
    cfg = mc_config(tmp_path, [{"question": "x", "choices": ["a", "b"], "answer": 0},
                               {"question": "y", "answer": 1}], mode="ll")
    with pytest.raises(ValueError, match=r"mc.jsonl:2: missing field 'choices'"):
        tasks.read_items(cfg.reader, True)


def test_an_unknown_dataset_lists_the_known_ones(tmp_path):
    (tmp_path / "alpha.py").write_text("")
    with pytest.raises(ValueError, match="unknown dataset 'beta'.*alpha"):
        find_datasets("beta", tmp_path)


def test_the_shipped_configs_load_and_read_their_data():
    from pathlib import Path

    config_dir = Path(__file__).resolve().parents[2] / "configs" / "eval"
    configs = find_datasets("arith_mc,commonsense_mc,commonsense_mc_circular,arith_qa", config_dir)
    for cfg in configs:
        items = tasks.read_items(cfg.reader, cfg.multiple_choice)
        assert 20 <= len(items) <= 40, cfg.name
        assert tasks.context_for(cfg, items[0], [])


def test_summary_has_one_row_per_metric_and_a_column_per_model():
    results = [
        {"model": "m1", "dataset": "d", "version": "abc123", "mode": "ll", "metrics": {"acc": 50.0, "acc_norm": 75.0}},
        {"model": "m2", "dataset": "d", "version": "abc123", "mode": "ll", "metrics": {"acc": 25.0, "acc_norm": 0.0}},
        {"model": "m1", "dataset": "e", "version": "def456", "mode": "gen", "metrics": {"exact_match": 10.0}},
    ]
    markdown = to_markdown(results, ["m1", "m2"])
    assert markdown.splitlines()[0] == "| dataset | version | metric | mode | m1 | m2 |"
    assert "| d | abc123 | acc_norm | ll | 75.00 | 0.00 |" in markdown
    assert "| e | def456 | exact_match | gen | 10.00 | - |" in markdown
    assert to_csv(results, ["m1", "m2"]).splitlines()[1] == "d,abc123,acc,ll,50.00,25.00"


def test_a_users_own_file_is_multiple_choice_or_qa_by_its_fields(tmp_path):
    from intern_jax.eval.config import data_file_config

    mc = tmp_path / "mine_mc.jsonl"
    mc.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": 1}\n')
    cfg = data_file_config(mc)
    assert (cfg.name, cfg.infer.mode, cfg.multiple_choice) == ("mine_mc", "ll", True)
    model = TableLM({"3": -2.0, "4": -1.0})
    assert evaluate_dataset(model, cfg)[0]["metrics"] == {"acc": 100.0, "acc_norm": 100.0}
    assert model.requests == [("Question: 2+2?\nAnswer:", " 3"), ("Question: 2+2?\nAnswer:", " 4")]
    qa = tmp_path / "mine_qa.jsonl"
    qa.write_text('{"question": "Capital of France?", "answer": "Paris"}\n')
    cfg = data_file_config(qa)
    assert (cfg.infer.mode, cfg.evaluator.metric) == ("gen", "exact_match")
    assert evaluate_dataset(TableLM(answer=lambda p: " Paris"), cfg)[0]["metrics"] == {"exact_match": 100.0}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "x"}\n')
    with pytest.raises(ValueError, match="'question' and 'answer'"):
        data_file_config(bad)
