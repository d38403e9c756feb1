"""Evaluation: dataset configs, the three inferencers (ppl / ll / gen), evaluators, CircularEval, the summary.

A model is anything with lm-evaluation-harness's requests (``EvalModel``); ``DecoderLM`` answers them
in process with the one decoder. Dataset configs live in ``configs/eval/``; ``scripts/evaluate.py``
is the command line. No OpenAI-endpoint client yet (``--url``), nor bundled public benchmarks.
"""

from intern_jax.eval.config import (
    DatasetConfig,
    EvaluatorConfig,
    FewShotConfig,
    InferConfig,
    PostprocessConfig,
    PromptConfig,
    ReaderConfig,
    data_file_config,
    find_datasets,
    load_dataset_config,
)
from intern_jax.eval.model import DecoderLM, EvalModel, RequestCache
from intern_jax.eval.run import evaluate_dataset, run

__all__ = [
    "DatasetConfig", "DecoderLM", "EvalModel", "EvaluatorConfig", "FewShotConfig", "InferConfig",
    "PostprocessConfig", "PromptConfig", "ReaderConfig", "RequestCache", "data_file_config", "evaluate_dataset",
    "find_datasets", "load_dataset_config", "run",
]
