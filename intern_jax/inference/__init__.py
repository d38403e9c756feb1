"""Inference: sampling, ``prefill`` / ``decode_step`` over a KV cache, ``generate`` and chat sessions.

``generate`` (and its streaming twin) is the only decoding implementation in the project;
evaluation, agents and the serving engine call it or the two jitted steps beneath it.
"""

from intern_jax.inference.chat import ChatSession
from intern_jax.inference.generate import (
    GenerationResult,
    bucket,
    decode_step,
    encode_prompt,
    generate,
    generate_text,
    grow_cache,
    prefill,
    prepare_params,
    stream_generate,
)
from intern_jax.inference.sampling import NO_TOKEN, SamplingParams, init_state, sample

__all__ = [
    "ChatSession", "NO_TOKEN", "GenerationResult", "SamplingParams", "bucket", "decode_step", "encode_prompt",
    "generate", "generate_text", "grow_cache", "init_state", "prefill", "prepare_params", "sample", "stream_generate",
]
