"""Typed, frozen dataset configs for evaluation (OpenCompass's reader / prompt / retriever / inferencer /
post-processor / evaluator split), and loading them from ``configs/eval/*.py``.

A config file binds ``config = DatasetConfig(...)``; its reader's relative ``path`` is taken from the
file's directory. ``DatasetConfig.version`` is a short hash of everything that shapes the prompts and
the scoring (not the data path nor the name), printed in the summary so numbers stay comparable.
This module reads no data and runs no model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path

from intern_jax.config import ConfigError, check_fields, load_config

INFERENCERS = ("ppl", "ll", "gen", "perplexity")
POSTPROCESSORS = ("none", "strip", "option_letter", "last_number", "regex", "code_block")
METRICS = ("accuracy", "exact_match", "numeric_match", "f1", "bleu", "rouge", "pass_at_k")
FEWSHOT_MODES = ("zero", "fixed", "random", "bm25")
FORMATS = ("jsonl", "csv", "parquet")
GENERATORS = ("needle",)
JUDGE_MODES = ("single", "pairwise")


@dataclass(frozen=True)
class ReaderConfig:
    """Where the items are and which of their fields mean what.

    ``fields`` maps the names the prompt uses to the file's columns (``{"question": "q"}``); unmapped
    names are read as they are. ``options``: the column holding the options (a list), or, for CSV, a
    tuple of columns (``("A", "B", "C", "D")``). ``answer``: the reference column (an option index, an
    option letter, or the answer text for generation tasks). ``generate``: items made here instead of read
    (``needle``: ``intern_jax.eval.needle.needle_rows(**generate_args)``); ``path`` is then unused.
    """

    path: str = ""
    format: str = "jsonl"
    fields: dict = field(default_factory=dict)
    options: str | tuple[str, ...] = ""
    answer: str = "answer"
    generate: str = ""
    generate_args: dict = field(default_factory=dict)

    def __post_init__(self):
        check_fields(self, "reader.")
        if self.format not in FORMATS:
            raise ConfigError(f"reader.format={self.format!r}; use one of {', '.join(FORMATS)}")
        if self.generate and self.generate not in GENERATORS:
            raise ConfigError(f"reader.generate={self.generate!r}; use one of {', '.join(GENERATORS)}")
        if not self.generate and not self.path:
            raise ConfigError("reader.path is empty; give the dataset file (or reader.generate)")


@dataclass(frozen=True)
class PromptConfig:
    """``template``: the question, ``str.format``-ed with the item's fields plus ``{options}`` (lines
    ``A. ...``) and ``{A}``, ``{B}``, ...; ``continuation``: what follows it, with ``{option}`` (the
    option's text), ``{label}`` (its letter) or ``{answer}`` (the reference, for few-shot examples of
    generation tasks). ``chat``: send the filled template as a user message (generation only)."""

    template: str
    continuation: str = " {option}"
    chat: bool = False
    system: str = ""
    fewshot_separator: str = "\n\n"

    def __post_init__(self):
        check_fields(self, "prompt.")


@dataclass(frozen=True)
class FewShotConfig:
    """``zero``; ``fixed``: the items at ``indices`` of ``path`` (default: the dataset itself);
    ``random``: ``k`` items drawn with ``seed``; ``bm25``: the ``k`` items whose question is nearest to the
    asked one by BM25 (``bm25s``, Lucene scoring; ties to the earlier item; nearest first). Never the
    item being asked."""

    mode: str = "zero"
    k: int = 0
    seed: int = 0
    indices: tuple[int, ...] = ()
    path: str = ""

    def __post_init__(self):
        check_fields(self, "fewshot.")
        if self.mode not in FEWSHOT_MODES:
            raise ConfigError(f"fewshot.mode={self.mode!r}; use one of {', '.join(FEWSHOT_MODES)}")
        if self.k < 0:
            raise ConfigError(f"fewshot.k must be >= 0, got {self.k}")


@dataclass(frozen=True)
class InferConfig:
    """``ppl``: the option whose filled template (question + continuation) has the lowest perplexity;
    ``ll``: log-likelihood of each option's continuation given the question (acc and acc_norm);
    ``gen``: generate up to ``max_tokens`` (greedy), ending at a ``stop`` string; ``perplexity``: held-out
    perplexity of each filled template (rolling log-likelihood): ``ppl`` (per token, over the whole set)
    and ``bits_per_byte``."""

    mode: str = "ll"
    max_tokens: int = 32
    stop: tuple[str, ...] = ("\n\n",)
    circular: bool = False  # multiple choice: also score every rotation of the options (CircularEval)
    # gen: ``num_samples`` completions per item at ``temperature`` (sample j of item n seeded from
    # (seed, n, j)); 1 sample at temperature 0 is greedy
    num_samples: int = 1
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self):
        check_fields(self, "infer.")
        if self.mode not in INFERENCERS:
            raise ConfigError(f"infer.mode={self.mode!r}; use one of {', '.join(INFERENCERS)}")
        if self.max_tokens < 1:
            raise ConfigError(f"infer.max_tokens must be >= 1, got {self.max_tokens}")
        if self.num_samples < 1:
            raise ConfigError(f"infer.num_samples must be >= 1, got {self.num_samples}")
        if self.num_samples > 1 and self.temperature <= 0:
            raise ConfigError(f"infer.num_samples={self.num_samples} needs infer.temperature > 0 (greedy samples "
                              "are all the same)")
        if self.temperature < 0:
            raise ConfigError(f"infer.temperature must be >= 0, got {self.temperature}")

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class PostprocessConfig:
    """How generated text becomes a prediction: ``option_letter`` (first standalone A-Z letter among the
    options), ``last_number``, ``regex`` (``pattern``'s first group, or the whole match), ``code_block``
    (the first fenced code block, else the text), ``strip``, ``none``."""

    kind: str = "strip"
    pattern: str = ""

    def __post_init__(self):
        check_fields(self, "postprocess.")
        if self.kind not in POSTPROCESSORS:
            raise ConfigError(f"postprocess.kind={self.kind!r}; use one of {', '.join(POSTPROCESSORS)}")
        if self.kind == "regex" and not self.pattern:
            raise ConfigError("postprocess.kind='regex' needs postprocess.pattern")


@dataclass(frozen=True)
class EvaluatorConfig:
    """``accuracy`` (multiple choice), ``exact_match`` (case and surrounding space ignored), ``numeric_match``
    (equal within ``tolerance``), ``f1`` (SQuAD's token F1), ``bleu`` (sacreBLEU, corpus level), ``rouge``
    (ROUGE-1/2/L F-measures), ``pass_at_k`` (HumanEval: the item's ``prompt`` field and the prediction run
    against the reference, its test code, with ``check(entry_point)``; each program gets ``timeout``
    seconds in a limited process; pass@k for each of ``k``: of the greedy completion, or with
    ``infer.num_samples`` n > 1 the unbiased estimator over the n samples)."""

    metric: str = "accuracy"
    tolerance: float = 1e-6
    timeout: float = 10.0
    k: tuple[int, ...] = (1,)  # pass_at_k: the k of each reported pass@k (each at most infer.num_samples)

    def __post_init__(self):
        check_fields(self, "evaluator.")
        if self.metric not in METRICS:
            raise ConfigError(f"evaluator.metric={self.metric!r}; use one of {', '.join(METRICS)}")
        if not self.k or any(k < 1 for k in self.k):
            raise ConfigError(f"evaluator.k must be positive integers, got {self.k}")


@dataclass(frozen=True)
class JudgeConfig:
    """Judge mode (``intern_jax.eval.judge``): a judge model (``--judge-model`` / ``--judge-url``) reads the
    generated answers. ``single``: rates each 1-10; ``pairwise``: compares each model's answers with the
    first model's, both orders. ``template``: the judge's prompt ("": MT-Bench's, see ``eval.judge``);
    ``max_tokens``: the judgement's length."""

    mode: str = "single"
    template: str = ""
    max_tokens: int = 256

    def __post_init__(self):
        check_fields(self, "judge.")
        if self.mode not in JUDGE_MODES:
            raise ConfigError(f"judge.mode={self.mode!r}; use one of {', '.join(JUDGE_MODES)}")
        if self.max_tokens < 1:
            raise ConfigError(f"judge.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    reader: ReaderConfig
    prompt: PromptConfig
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    judge: JudgeConfig | None = None  # judged by a model (answers are generated: infer.mode 'gen')

    def __post_init__(self):
        check_fields(self)
        if self.judge is not None and self.infer.mode != "gen":
            raise ConfigError(f"dataset {self.name}: a judge reads generated answers; set infer.mode='gen' "
                              f"(got {self.infer.mode!r})")
        multiple_choice = self.infer.mode in ("ppl", "ll")
        if multiple_choice and not self.reader.options:
            raise ConfigError(f"dataset {self.name}: infer.mode={self.infer.mode!r} scores options; "
                              "set reader.options (the column holding them)")
        if self.infer.num_samples > 1 and self.evaluator.metric != "pass_at_k":
            raise ConfigError(f"dataset {self.name}: infer.num_samples > 1 is scored by pass@k only; set "
                              "evaluator.metric='pass_at_k' or one sample")
        if self.evaluator.metric == "pass_at_k" and max(self.evaluator.k) > self.infer.num_samples:
            raise ConfigError(f"dataset {self.name}: evaluator.k={self.evaluator.k} needs at least "
                              f"{max(self.evaluator.k)} samples per item; infer.num_samples={self.infer.num_samples}")
        if self.infer.circular and not self.reader.options:
            raise ConfigError(f"dataset {self.name}: infer.circular needs multiple-choice options (reader.options)")
        if self.infer.circular and not _shows_order(self.prompt):
            raise ConfigError(f"dataset {self.name}: infer.circular rotates the options, but the prompt shows no "
                              "order (no {options}, {A}, {B}... in the template, no {label} in the continuation), "
                              "so every rotation scores the same; list the options in the template or drop circular")

    @property
    def multiple_choice(self) -> bool:
        return bool(self.reader.options)

    @property
    def version(self) -> str:
        """A short hash of the prompt settings (prompt, few-shot, inferencer, post-processor, evaluator, judge)."""
        settings = {k: dataclasses.asdict(getattr(self, k))
                    for k in ("prompt", "fewshot", "infer", "postprocess", "evaluator")}
        if self.judge is not None:  # judged sets only: the other versions stay as they were
            settings["judge"] = dataclasses.asdict(self.judge)
        settings["fewshot"].pop("path")
        if self.evaluator.metric != "pass_at_k":  # the code runs' time limit shapes only pass@k
            settings["evaluator"].pop("timeout")
        # sampling settings at their defaults (greedy, pass@1) leave the versions of older configs as they were
        if self.evaluator.k == (1,):
            settings["evaluator"].pop("k")
        if (self.infer.num_samples, self.infer.temperature, self.infer.seed) == (1, 0.0, 0):
            for key in ("num_samples", "temperature", "seed"):
                settings["infer"].pop(key)
        blob = json.dumps(settings, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:6]


def _shows_order(prompt: PromptConfig) -> bool:
    """Whether the options' order reaches the model: listed in the template, or answered by letter."""
    names = {name for text in (prompt.template, prompt.continuation)
             for _, name, _, _ in string.Formatter().parse(text) if name}
    return bool(names & {"options", "label", *string.ascii_uppercase})


def load_dataset_config(path: str | Path, overrides=()) -> DatasetConfig:
    """A ``DatasetConfig`` from a config file, its data paths made absolute from the file's directory."""
    path = Path(path)
    cfg = load_config(path, overrides)
    if not isinstance(cfg, DatasetConfig):
        raise ConfigError(f"config file {path} binds {type(cfg).__name__}, not an evaluation DatasetConfig")
    base = path.resolve().parent
    reader = cfg.reader if cfg.reader.generate else dataclasses.replace(cfg.reader, path=str(base / cfg.reader.path))
    fewshot = cfg.fewshot
    if fewshot.path:
        fewshot = dataclasses.replace(fewshot, path=str(base / fewshot.path))
    return dataclasses.replace(cfg, reader=reader, fewshot=fewshot)


def find_datasets(names: str | list[str], config_dir: str | Path) -> list[DatasetConfig]:
    """Dataset configs by name (``configs/eval/<name>.py``); an unknown name lists the known ones."""
    config_dir = Path(config_dir)
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    known = sorted(p.stem for p in config_dir.glob("*.py") if not p.stem.startswith("_"))
    out = []
    for name in names:
        if not name:
            continue
        if name not in known:
            raise ValueError(f"unknown dataset {name!r}; known datasets (in {config_dir}): {', '.join(known)}")
        out.append(load_dataset_config(config_dir / f"{name}.py"))
    if not out:
        raise ValueError(f"no dataset named; known datasets (in {config_dir}): {', '.join(known)}")
    return out


def data_file_config(path: str | Path) -> DatasetConfig:
    """A config for a user's own JSONL file, no config file needed (``--data``). Two layouts, told apart
    by the first item: multiple choice ``{"question", "choices": [...], "answer": INDEX}``, scored by
    log-likelihood with lm-eval's common template (context ``"Question: {question}\\nAnswer:"``,
    continuation ``" {choice}"``), and QA ``{"question", "answer"}``, scored by greedy generation to the
    end of the line and exact match."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data {path} does not exist")
    with path.open(encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        item = json.loads(first) if first else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--data {path}: the first item is not valid JSON ({e.msg})") from None
    if not isinstance(item, dict) or "question" not in item or "answer" not in item:
        raise ValueError(f"--data {path}: items must be JSON objects with 'question' and 'answer' (and 'choices' "
                         "for multiple choice)")
    prompt = PromptConfig(template="Question: {question}\nAnswer:")
    name = path.stem
    if "choices" in item:
        return DatasetConfig(name=name, reader=ReaderConfig(path=str(path.resolve()), options="choices"),
                             prompt=prompt, infer=InferConfig(mode="ll"))
    return DatasetConfig(name=name, reader=ReaderConfig(path=str(path.resolve())),
                         prompt=dataclasses.replace(prompt, continuation=" {answer}"),
                         infer=InferConfig(mode="gen", stop=("\n",)), postprocess=PostprocessConfig(kind="strip"),
                         evaluator=EvaluatorConfig(metric="exact_match"))
