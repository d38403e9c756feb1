"""Open questions graded by a judge model (OpenCompass's subjective evaluation, single-answer grading): each
model answers in chat, the judge (``--judge-model`` / ``--judge-url``) rates every answer 1-10 with MT-Bench's
prompt and the reference answer beside it. Metrics: the mean ``rating`` and ``unparsed`` judgements."""

from intern_jax.eval.config import DatasetConfig, InferConfig, JudgeConfig, PromptConfig, ReaderConfig

config = DatasetConfig(
    name="judge_single",
    reader=ReaderConfig(path="data/open_questions.jsonl", answer="reference"),
    prompt=PromptConfig(template="{question}", chat=True),
    infer=InferConfig(mode="gen", max_tokens=96, stop=()),
    judge=JudgeConfig(mode="single", max_tokens=192),
)
