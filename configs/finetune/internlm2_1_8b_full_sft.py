"""Full-parameter SFT of InternLM2-1.8B in XTuner's recipe (internlm2_1_8b_full_alpaca_e3): every weight
trained, bf16 compute with fp32 master weights, packed 2048-token rows, batch 16 (4 accumulated
micro-batches), AdamW 2e-5 with 3% warmup, full remat.

    python scripts/finetune.py --config configs/finetune/internlm2_1_8b_full_sft.py \\
        --set base_model=/path/to/internlm2-1_8b --set train.data.path=/path/to/alpaca.json
"""

from intern_jax.config import Execution
from intern_jax.data.sft import SFTDataConfig
from intern_jax.train.config import CheckpointConfig, LoggingConfig, OptimizerConfig, ParallelConfig
from intern_jax.train.finetune import FinetuneConfig, finetune_training

config = FinetuneConfig(
    base_model="models/internlm2-1_8b",  # a Hugging Face InternLM2 directory
    mode="full",
    base_dtype="float32",
    train=finetune_training(
        SFTDataConfig(path="data/sft/alpaca.json", format="alpaca"),
        name="internlm2_1_8b_full_sft",
        steps=2000,
        batch_size=16,
        seq_len=2048,
        execution=Execution(dtype="bfloat16", remat="full"),
        optimizer=OptimizerConfig(learning_rate=2e-5, warmup_steps=60, min_lr_ratio=0.0, b1=0.9, b2=0.999,
                                  weight_decay=0.0, grad_clip=1.0),
        parallel=ParallelConfig(data=1, fsdp=-1, tensor=1, zero="full", micro_batches=4),
        checkpoint=CheckpointConfig(save_every=500, keep_last=2),
        logging=LoggingConfig(log_every=10),
    ),
)
