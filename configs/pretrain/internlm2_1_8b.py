"""InternLM2-1.8B pretraining (InternEvo recipe): 512 x 4096 tokens per step, ZeRO-3 over all devices.

micro_batches=64 puts one 4096-token row per device in each micro-batch on 8 devices; on N devices
use 512 / N (scripts/plan.py says what fits).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _internevo import internevo_run  # noqa: E402

config = internevo_run(
    "internlm2_1_8b.py", name="internlm2-1.8b", learning_rate=3e-4, batch_size=512, micro_batches=64,
    parallel={"data": 1, "fsdp": -1, "tensor": 1, "zero": "full"},
)
