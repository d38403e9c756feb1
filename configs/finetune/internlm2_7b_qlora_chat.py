"""QLoRA chat SFT of InternLM2-Chat-7B in XTuner's recipe (internlm2_chat_7b_qlora_oasst1): NF4 base with
double-quantized scales, LoRA r=64 / alpha=16 / dropout 0.1 on every matrix, bf16 compute, packed 2048-token
rows, batch 1 x 16 accumulated micro-batches, AdamW 2e-4. scripts/bench/finetune.py measures the peak ahead
of time: 9.25 GiB for one 2048-token step, 11.27 GiB with the 16 accumulated micro-batches on the CPU compiler
(the accumulated gradients, and a float32 copy of the embedding table: XLA:CPU gathers bf16 rows through float32
and hoists that conversion out of the accumulation loop).

    python scripts/finetune.py --config configs/finetune/internlm2_7b_qlora_chat.py \\
        --set base_model=/path/to/internlm2-chat-7b --set train.data.path=/path/to/chat.jsonl
"""

from intern_jax.config import Execution
from intern_jax.data.sft import SFTDataConfig
from intern_jax.model.lora import LoraConfig
from intern_jax.train.config import CheckpointConfig, LoggingConfig, OptimizerConfig, ParallelConfig
from intern_jax.train.finetune import FinetuneConfig, QuantConfig, finetune_training

config = FinetuneConfig(
    base_model="models/internlm2-chat-7b",  # a Hugging Face InternLM2 directory (config.json + safetensors)
    mode="qlora",
    quant=QuantConfig(kind="nf4", block=64, double_quant=True),
    lora=LoraConfig(rank=64, alpha=16.0, dropout=0.1, targets=r"layers/(wqkv|wo|w1|w2|w3)"),
    base_dtype="bfloat16",
    train=finetune_training(
        SFTDataConfig(path="data/sft/chat.jsonl", format="messages"),
        name="internlm2_7b_qlora_chat",
        steps=3000,
        batch_size=16,
        seq_len=2048,
        execution=Execution(dtype="bfloat16", remat="full"),
        optimizer=OptimizerConfig(learning_rate=2e-4, warmup_steps=90, min_lr_ratio=0.0, b1=0.9, b2=0.999,
                                  weight_decay=0.0, grad_clip=1.0),
        parallel=ParallelConfig(data=1, fsdp=-1, tensor=1, zero="full", micro_batches=16),
        checkpoint=CheckpointConfig(save_every=500, keep_last=2),
        logging=LoggingConfig(log_every=10),
    ),
)
