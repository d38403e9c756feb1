"""InternLM2-20B pretraining (InternEvo recipe): 1024 x 4096 tokens per step, ZeRO-3 with 2-way tensor parallelism."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _internevo import internevo_run  # noqa: E402

config = internevo_run(
    "internlm2_20b.py", name="internlm2-20b", learning_rate=2e-4, batch_size=1024, micro_batches=32,
    parallel={"data": 1, "fsdp": -1, "tensor": 2, "zero": "full"},
)
