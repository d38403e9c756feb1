"""InternLM2-20B pretraining (InternEvo recipe): 1024 x 4096 tokens per step, ZeRO-3 with 2-way tensor parallelism.

micro_batches=256 puts one 4096-token row per data shard in each micro-batch on 8 devices
(fsdp=4 x tensor=2); on N devices use 1024 / (N / 2).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _internevo import internevo_run  # noqa: E402

config = internevo_run(
    "internlm2_20b.py", name="internlm2-20b", learning_rate=2e-4, batch_size=1024, micro_batches=256,
    parallel={"data": 1, "fsdp": -1, "tensor": 2, "zero": "full"},
)
