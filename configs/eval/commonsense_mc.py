"""Multiple-choice everyday facts (smoke set, 24 items, CSV): the prompt lists the options, and the answer is
the option whose filled prompt has the lowest perplexity (OpenCompass's PPL mode); CircularEval rotates
the listed options, so a model that leans on an option's position loses the item."""

from intern_jax.eval.config import DatasetConfig, InferConfig, PromptConfig, ReaderConfig

config = DatasetConfig(
    name="commonsense_mc",
    reader=ReaderConfig(path="data/commonsense_mc.csv", format="csv", options=("A", "B", "C", "D"), answer="answer"),
    prompt=PromptConfig(template="Question: {question}\n{options}\nAnswer:", continuation=" {option}"),
    infer=InferConfig(mode="ppl", circular=True),
)
