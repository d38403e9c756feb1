"""Open questions compared pairwise by a judge model (OpenCompass's subjective evaluation): every model
answers in chat, the judge (``--judge-model`` / ``--judge-url``) compares each model's answer with the first
model's, twice with the positions swapped. Metrics: ``win_rate_vs_<first model>`` (ties count half) and
``unparsed`` judgements."""

from intern_jax.eval.config import DatasetConfig, InferConfig, JudgeConfig, PromptConfig, ReaderConfig

config = DatasetConfig(
    name="judge_pairwise",
    reader=ReaderConfig(path="data/open_questions.jsonl", answer="reference"),
    prompt=PromptConfig(template="{question}", chat=True),
    infer=InferConfig(mode="gen", max_tokens=96, stop=()),
    judge=JudgeConfig(mode="pairwise", max_tokens=192),
)
