"""LoRA SFT of the embedded SmolLM2-135M-Instruct on calculator use: arithmetic word problems answered with a
Hermes-style ``<tool_call>`` to the calculator, then "The answer is N." from its result, in exactly the
conversations the agent loop builds (intern_jax/agent/tool_sft.py); one row in five needs no tool and is
answered at once. The data file is committed beside this config (scripts/make_tool_data.py writes it and the
held-out problems). After it, `scripts/agent.py --model runs/demo-smollm2-tools` calls the calculator.

The LoRA and optimizer settings are the persona run's (smollm2_lora_sft.py); the data, the run's length and
its batch shape are this one's."""

import dataclasses
from pathlib import Path

from intern_jax.config import load_config
from intern_jax.data.sft import SFTDataConfig
from intern_jax.train.config import LoggingConfig

HERE = Path(__file__).resolve().parent
DATA = HERE / "smollm2_tools.jsonl"

persona = load_config(HERE / "smollm2_lora_sft.py")
config = dataclasses.replace(
    persona,
    train=dataclasses.replace(
        persona.train,
        data=SFTDataConfig(path=str(DATA), format="messages"),
        name="smollm2_tools",
        steps=12,
        batch_size=4,
        seq_len=384,  # the longest conversation is 366 tokens (a 270-token system message holds the tool schema)
        logging=LoggingConfig(log_every=4, tensorboard=False),
    ),
)
