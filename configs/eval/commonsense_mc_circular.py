"""The everyday-facts smoke set asked MMLU-style: the prompt lists options A-D and the model's log-likelihood
of each letter picks the answer; CircularEval rotates the options, and an item counts only if every
rotation is answered right (a model that favours a position, not the answer, scores 0)."""

from intern_jax.eval.config import DatasetConfig, InferConfig, PromptConfig, ReaderConfig

config = DatasetConfig(
    name="commonsense_mc_circular",
    reader=ReaderConfig(path="data/commonsense_mc.csv", format="csv", options=("A", "B", "C", "D"), answer="answer"),
    prompt=PromptConfig(template="Question: {question}\n{options}\nAnswer:", continuation=" {label}"),
    infer=InferConfig(mode="ll", circular=True),
)
