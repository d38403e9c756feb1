"""The settings the embedded standard-library corpus is built with (loosened for docstrings)."""

from intern_jax.data.corpus import corpus_config

config = corpus_config()
