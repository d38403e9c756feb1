"""Multiple-choice arithmetic (smoke set, 30 items): log-likelihood of each option given the question (acc, acc_norm).

The prompt does not list the options, so their order cannot matter and CircularEval would add nothing.
"""

from intern_jax.eval.config import DatasetConfig, InferConfig, PromptConfig, ReaderConfig

config = DatasetConfig(
    name="arith_mc",
    reader=ReaderConfig(path="data/arith_mc.jsonl", options="choices", answer="answer"),
    prompt=PromptConfig(template="Question: {question}\nAnswer:", continuation=" {option}"),
    infer=InferConfig(mode="ll"),
)
