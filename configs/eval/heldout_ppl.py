"""Held-out perplexity on a processed corpus: each document's rolling log-likelihood (windows of the model's
context), reported as ``ppl`` (per token over the whole set) and ``bits_per_byte`` (comparable across
tokenizers). Point ``reader.path`` at your own processed JSONL (one ``{"text": ...}`` per line, e.g. the
held-out split written by scripts/process_data.py) to measure it on your data."""

from intern_jax.eval.config import DatasetConfig, InferConfig, PromptConfig, ReaderConfig

config = DatasetConfig(
    name="heldout_ppl",
    reader=ReaderConfig(path="data/heldout.jsonl", answer="text"),
    prompt=PromptConfig(template="{text}"),
    infer=InferConfig(mode="perplexity"),
)
