"""A tiny InternLM2-shaped model for tests and CPU runs (GQA, untied head)."""

from intern_jax.config import ModelConfig

config = ModelConfig(
    name="tiny",
    vocab_size=512,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=128,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=512,
)
