"""InternLM2.5-7B: the InternLM2-7B architecture (rope_theta 1e6, dynamic NTK x2.0, 32768 positions)."""

import dataclasses
from pathlib import Path

from intern_jax.config import load_config

config = dataclasses.replace(load_config(Path(__file__).with_name("internlm2_7b.py")), name="internlm2.5-7b")
