"""InternLM2-7B (numbers of the released config.json)."""

from intern_jax.config import ModelConfig, RopeScaling

config = ModelConfig(
    name="internlm2-7b",
    vocab_size=92544,
    hidden_size=4096,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    intermediate_size=14336,
    rms_norm_eps=1e-5,
    rope_theta=1_000_000.0,
    rope_scaling=RopeScaling("dynamic", 2.0),
    max_position_embeddings=32768,
    tie_word_embeddings=False,
    attention_bias=False,
)
