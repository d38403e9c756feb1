"""Short-answer arithmetic (smoke set, 30 items): three fixed worked examples, greedy generation to the end
of the line, the last number compared with the answer."""

from intern_jax.eval.config import (
    DatasetConfig,
    EvaluatorConfig,
    FewShotConfig,
    InferConfig,
    PostprocessConfig,
    PromptConfig,
    ReaderConfig,
)

config = DatasetConfig(
    name="arith_qa",
    reader=ReaderConfig(path="data/arith_qa.jsonl", answer="answer"),
    prompt=PromptConfig(template="Question: {question}\nAnswer:", continuation=" {answer}", fewshot_separator="\n\n"),
    fewshot=FewShotConfig(mode="fixed", indices=(0, 1, 2)),
    infer=InferConfig(mode="gen", max_tokens=8, stop=("\n",)),
    postprocess=PostprocessConfig(kind="last_number"),
    evaluator=EvaluatorConfig(metric="numeric_match"),
)
