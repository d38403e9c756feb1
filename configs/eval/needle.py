"""Needle in a haystack (NeedleBench single-needle retrieval, generated from a seed, no data file): a secret
7-digit code hidden at depths 0-100% of 100-400 words of filler prose, asked for in a chat turn; exact match
of the first 7-digit number in the reply. ``scripts/evaluate.py`` also draws accuracy over depth x length
(``OUT/plots/<model>/needle_heatmap.png``). For longer haystacks, copy this file and raise ``lengths``
(the model's context must hold about 1.3 tokens per word)."""

from intern_jax.eval.config import (
    DatasetConfig,
    EvaluatorConfig,
    InferConfig,
    PostprocessConfig,
    PromptConfig,
    ReaderConfig,
)

config = DatasetConfig(
    name="needle",
    reader=ReaderConfig(generate="needle", generate_args={"lengths": (100, 200, 400), "depths": (0.0, 0.5, 1.0),
                                                          "per_cell": 2, "seed": 0}),
    prompt=PromptConfig(template="{context}\n\n{question} Reply with the 7-digit code only.", chat=True),
    infer=InferConfig(mode="gen", max_tokens=16, stop=("\n",)),
    postprocess=PostprocessConfig(kind="regex", pattern=r"(\d{7})"),
    evaluator=EvaluatorConfig(metric="exact_match"),
)
