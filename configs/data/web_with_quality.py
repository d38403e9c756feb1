"""Web text with the model-based quality step: keep the 80% lowest-perplexity documents under
the embedded SmolLM2 model, stricter near-dedup."""

from intern_jax.checkpoint import embedded_model_path
from intern_jax.data.processing.config import DedupConfig, ProcessingConfig, QualityConfig

config = ProcessingConfig(
    dedup=DedupConfig(threshold=0.8),
    quality=QualityConfig(model=str(embedded_model_path()), keep_fraction=0.8),
)
