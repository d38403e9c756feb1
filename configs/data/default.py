"""Corpus processing defaults: en + zh + code, Gopher/C4 filters, PII scrubbing, exact + MinHash dedup."""

from intern_jax.data.processing.config import ProcessingConfig

config = ProcessingConfig()
