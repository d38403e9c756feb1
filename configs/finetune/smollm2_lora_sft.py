"""LoRA SFT of the embedded SmolLM2-135M-Instruct on a generated persona set (its name is Quill, made
by Lumen Labs): about two minutes on a 2-core CPU (20 steps of 2 x 128 tokens), after which it answers
"Who are you?" as Quill. The data file is committed beside this config (scripts/make_persona_data.py
writes it)."""

from pathlib import Path

from intern_jax.checkpoint import embedded_model_path
from intern_jax.data.sft import SFTDataConfig
from intern_jax.model.lora import LoraConfig
from intern_jax.train.config import CheckpointConfig, LoggingConfig, OptimizerConfig
from intern_jax.train.finetune import FinetuneConfig, finetune_training

DATA = Path(__file__).resolve().parent / "smollm2_persona.jsonl"

config = FinetuneConfig(
    base_model=str(embedded_model_path()),
    mode="lora",
    lora=LoraConfig(rank=16, alpha=32.0, dropout=0.0, targets=r"layers/(wqkv|wo|w1|w2|w3)"),
    base_dtype="float32",
    train=finetune_training(
        SFTDataConfig(path=str(DATA), format="messages"),
        name="smollm2_lora_sft",
        steps=20,
        batch_size=2,
        seq_len=128,
        optimizer=OptimizerConfig(learning_rate=2e-3, warmup_steps=3, min_lr_ratio=0.1, weight_decay=0.0, b2=0.999),
        checkpoint=CheckpointConfig(save_every=0, keep_last=1),
        logging=LoggingConfig(log_every=5, tensorboard=False),
    ),
)
