"""A tiny model pretrained on CPU in a minute or two on the embedded stdlib corpus (runs/corpus,
built on first use); the loss visibly falls. The vocabulary comes from the corpus tokenizer."""

import dataclasses
from pathlib import Path

from intern_jax.config import load_config
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
model = dataclasses.replace(load_config(ROOT / "configs/model/tiny.py"), name="tiny-pretrain", vocab_size=0)

config = TrainConfig(
    name="tiny",
    model=model,
    data=DataConfig(path="runs/corpus", holdout=0.02),  # one document in 50 held out for eval
    tokenizer="runs/corpus/tokenizer",
    steps=150,
    batch_size=8,
    seq_len=256,
    optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=15, min_lr_ratio=0.1),
    parallel=ParallelConfig(data=1, fsdp=-1, tensor=1, zero="full"),
    checkpoint=CheckpointConfig(save_every=50, keep_last=2),
    logging=LoggingConfig(log_every=10),
    eval=EvalConfig(every=50, max_batches=16),
)
