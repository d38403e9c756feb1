"""Inference: the KV-cache decoder, sampling, ``generate`` / ``stream_generate`` and chat sessions.

``Decoder`` is the only decoding implementation in the project: ``generate``, ``stream_generate``,
``generate_text``, ``ChatSession``, the serving engine and evaluation's scorer all drive it.
"""

from intern_jax.inference.chat import ChatSession
from intern_jax.inference.decoder import DecodeBatch, Decoder, PagedLayout, StepOutput
from intern_jax.inference.generate import (
    GenerationResult,
    encode_prompt,
    generate,
    generate_text,
    stream_generate,
)
from intern_jax.inference.sampling import SamplingParams
from intern_jax.inference.stop import StopStrings

__all__ = [
    "ChatSession", "DecodeBatch", "Decoder", "GenerationResult", "PagedLayout", "SamplingParams", "StepOutput",
    "StopStrings", "encode_prompt", "generate", "generate_text", "stream_generate",
]
