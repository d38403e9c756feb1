"""Evaluation: dataset configs, the three inferencers (ppl / ll / gen), evaluators, CircularEval, the summary.

A model is anything with lm-evaluation-harness's requests (``EvalModel``); ``DecoderLM`` answers them
in process with the one decoder, ``EndpointLM`` over any OpenAI-compatible endpoint; a judge model
(``judge.py``) rates or compares generated answers. Dataset configs live in ``configs/eval/``;
``scripts/evaluate.py`` is the command line (docs/eval.md).
"""

from intern_jax.eval.config import (
    DatasetConfig,
    EvaluatorConfig,
    FewShotConfig,
    InferConfig,
    JudgeConfig,
    PostprocessConfig,
    PromptConfig,
    ReaderConfig,
    data_file_config,
    find_datasets,
    load_dataset_config,
)
from intern_jax.eval.endpoint import EndpointError, EndpointLM
from intern_jax.eval.model import DecoderLM, EvalModel, RequestCache
from intern_jax.eval.run import evaluate_dataset, merge, run

__all__ = [
    "DatasetConfig", "DecoderLM", "EndpointError", "EndpointLM", "EvalModel", "EvaluatorConfig", "FewShotConfig",
    "InferConfig", "JudgeConfig", "PostprocessConfig", "PromptConfig", "ReaderConfig", "RequestCache",
    "data_file_config", "evaluate_dataset", "find_datasets", "load_dataset_config", "merge", "run",
]
