"""A tiny model pretrained on CPU in a minute or two; the loss visibly falls."""

import dataclasses

from intern_jax.config import load_config
from intern_jax.train.config import CheckpointConfig, LoggingConfig, OptimizerConfig, ParallelConfig, TrainConfig
from intern_jax.train.synthetic import SyntheticData

model = dataclasses.replace(load_config("configs/model/tiny.py"), name="tiny-pretrain")

config = TrainConfig(
    name="tiny",
    model=model,
    data=SyntheticData(seed=0),
    steps=200,
    batch_size=8,
    seq_len=128,
    optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=20, min_lr_ratio=0.1),
    parallel=ParallelConfig(data=1, fsdp=-1, tensor=1, zero="full"),
    checkpoint=CheckpointConfig(save_every=50, keep_last=2),
    logging=LoggingConfig(log_every=10),
)
