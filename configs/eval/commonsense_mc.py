"""Multiple-choice everyday facts (smoke set, 24 items, CSV): the option whose filled prompt (question and
answer) has the lowest perplexity, OpenCompass's PPL mode. The prompt does not list the options."""

from intern_jax.eval.config import DatasetConfig, InferConfig, PromptConfig, ReaderConfig

config = DatasetConfig(
    name="commonsense_mc",
    reader=ReaderConfig(path="data/commonsense_mc.csv", format="csv", options=("A", "B", "C", "D"), answer="answer"),
    prompt=PromptConfig(template="Question: {question}\nAnswer:", continuation=" {option}"),
    infer=InferConfig(mode="ppl"),
)
