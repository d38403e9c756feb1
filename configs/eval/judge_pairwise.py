"""Open questions compared pairwise by a judge model (OpenCompass's subjective evaluation): every model
answers in chat, the judge (``--judge-model`` / ``--judge-url``) compares each model's answer with the first
model's, twice with the positions swapped. Metrics: ``win_rate_vs_<first model>`` (ties count half) and
``unparsed`` judgements. Questions, prompt and answer length are judge_single.py's."""

import dataclasses
from pathlib import Path

from intern_jax.config import load_config

single = load_config(Path(__file__).resolve().parent / "judge_single.py")
config = dataclasses.replace(single, name="judge_pairwise", judge=dataclasses.replace(single.judge, mode="pairwise"))
