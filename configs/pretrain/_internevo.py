"""InternEvo's pretraining recipe shared by the InternLM2 configs (imported, not a run config).

AdamW beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.01, gradient clipping 1.0, linear
warmup then cosine to 10% of the peak; bf16 compute over fp32 master weights, full remat.
"""

import dataclasses
from pathlib import Path

from intern_jax.config import Execution, load_config
from intern_jax.data.config import DataConfig
from intern_jax.train.config import (
    CheckpointConfig,
    EvalConfig,
    LoggingConfig,
    OptimizerConfig,
    ParallelConfig,
    TrainConfig,
)

ROOT = Path(__file__).resolve().parents[2]


def internevo_run(model_file: str, *, name: str, learning_rate: float, batch_size: int, micro_batches: int,
                  parallel: dict, seq_len: int = 4096, steps: int = 250_000) -> TrainConfig:
    model = dataclasses.replace(load_config(ROOT / "configs/model" / model_file), param_dtype="float32")
    return TrainConfig(
        name=name,
        model=model,
        execution=Execution(dtype="bfloat16", remat="full"),
        # a corpus processed with the InternLM2 tokenizer (scripts/process_data.py); set data.path / tokenizer
        data=DataConfig(path="runs/internlm2_corpus", num_workers=4, holdout=0.001),
        tokenizer="runs/internlm2_corpus/tokenizer",
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        optimizer=OptimizerConfig(
            learning_rate=learning_rate, min_lr_ratio=0.1, warmup_steps=2000, b1=0.9, b2=0.95, eps=1e-8,
            weight_decay=0.01, grad_clip=1.0,
        ),
        parallel=ParallelConfig(micro_batches=micro_batches, **parallel),
        checkpoint=CheckpointConfig(save_every=1000, keep_last=3, keep_every=10_000),
        logging=LoggingConfig(log_every=10),
        eval=EvalConfig(every=1000, max_batches=16),  # on the held-out documents (data.holdout)
    )
