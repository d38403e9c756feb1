"""LoRA SFT of the embedded SmolLM2-135M-Instruct on calculator use: arithmetic word problems answered with a
Hermes-style ``<tool_call>`` to the calculator, then "The answer is N." from its result, in exactly the
conversations the agent loop builds (intern_jax/agent/tool_sft.py); one row in five needs no tool and is
answered at once. The data file is committed beside this config (scripts/make_tool_data.py writes it and the
held-out problems). After it, `scripts/agent.py --model runs/demo-smollm2-tools` calls the calculator."""

from pathlib import Path

from intern_jax.checkpoint import embedded_model_path
from intern_jax.data.sft import SFTDataConfig
from intern_jax.model.lora import LoraConfig
from intern_jax.train.config import CheckpointConfig, LoggingConfig, OptimizerConfig
from intern_jax.train.finetune import FinetuneConfig, finetune_training

DATA = Path(__file__).resolve().parent / "smollm2_tools.jsonl"

config = FinetuneConfig(
    base_model=str(embedded_model_path()),
    mode="lora",
    lora=LoraConfig(rank=16, alpha=32.0, dropout=0.0, targets=r"layers/(wqkv|wo|w1|w2|w3)"),
    base_dtype="float32",
    train=finetune_training(
        SFTDataConfig(path=str(DATA), format="messages"),
        name="smollm2_tools",
        steps=12,
        batch_size=4,
        seq_len=384,  # the longest conversation is 366 tokens (a 270-token system message holds the tool schema)
        optimizer=OptimizerConfig(learning_rate=2e-3, warmup_steps=3, min_lr_ratio=0.1, weight_decay=0.0, b2=0.999),
        checkpoint=CheckpointConfig(save_every=0, keep_last=1),
        logging=LoggingConfig(log_every=4, tensorboard=False),
    ),
)
