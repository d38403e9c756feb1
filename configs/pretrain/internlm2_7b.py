"""InternLM2-7B pretraining (InternEvo recipe): 1024 x 4096 tokens per step, ZeRO-3 over all devices.

micro_batches=128 puts one 4096-token row per device in each micro-batch on 8 devices (peak about
28 GiB per device by scripts/plan.py); on N devices use 1024 / N.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _internevo import internevo_run  # noqa: E402

config = internevo_run(
    "internlm2_7b.py", name="internlm2-7b", learning_rate=3e-4, batch_size=1024, micro_batches=128,
    parallel={"data": 1, "fsdp": -1, "tensor": 1, "zero": "full"},
)
