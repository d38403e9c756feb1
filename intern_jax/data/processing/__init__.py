"""Corpus processing: raw files -> cleaned, deduplicated, tokenised ArrayRecord shards.

Stages (readers, normalise, language, filters, pii, dedup, quality, shards) are functions over
documents with their own counters; ``runner`` drives them on all local cores with resume,
``beam_runner`` as Apache Beam pipelines. Entry point: ``runner.process(inputs, output, cfg)``.
Packing documents into training rows is the input pipeline's job, not this package's.
"""

from intern_jax.data.processing.config import ProcessingConfig

__all__ = ["ProcessingConfig", "process"]


def process(inputs, output, cfg=None, progress=True):
    """Run the whole pipeline; see ``runner.process``."""
    from intern_jax.data.processing.runner import process as _process  # noqa: PLC0415

    return _process(inputs, output, cfg, progress)
