"""The chain closed on the real model, as ``make demo``'s tools stage runs it: LoRA on the committed tool-use
set (configs/finetune/smollm2_tools.py) makes the embedded SmolLM2 solve held-out arithmetic word problems
through the calculator, where the base model does not. Both success rates are printed; the problems are
the first of the committed held-out file (none of them is in the training set)."""

from pathlib import Path

import jax
import pytest

from intern_jax.agent import Agent, EngineChatModel
from intern_jax.agent.tool_sft import calculator_tools, load_problems, score_tool_use
from intern_jax.checkpoint import load_model
from intern_jax.serve import Engine, EngineConfig
from intern_jax.train import finetune as F

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "finetune" / "smollm2_tools.py"
HELDOUT = ROOT / "configs" / "finetune" / "smollm2_tools_heldout.jsonl"
PROBLEMS = 30  # of the file's 100 (the demo scores all of them)


def _score(decoder, problems) -> dict:
    engine = Engine(decoder, EngineConfig(max_batch_size=len(problems), max_model_len=768))
    try:
        agent = Agent(EngineChatModel(engine, max_new_tokens=64), calculator_tools(), "hermes", max_steps=3)
        return score_tool_use(problems, agent.run_many([p.question for p in problems]))
    finally:
        engine.close()


@pytest.mark.slow
def test_lora_on_the_tool_set_makes_smollm2_solve_heldout_problems_with_the_calculator(
        tmp_path, smollm2, smollm2_decoder, capsys):
    from intern_jax.sharding import make_mesh

    cfg = F.load_finetune_config(CONFIG, ["train.logging.progress=false"])
    F.finetune(cfg, tmp_path / "run", base=smollm2, mesh=make_mesh({"fsdp": 1}, devices=jax.devices()[:1]))
    tuned = load_model(tmp_path / "run")  # the run directory as `--model` loads it: adapters merged
    problems = load_problems(HELDOUT)[:PROBLEMS]
    base = _score(smollm2_decoder, problems)
    after = _score(smollm2_decoder.with_params(tuned.params), problems)  # the base model's compiled programs
    with capsys.disabled():
        print(f"\ntool use on {PROBLEMS} held-out problems: fine-tuned {after['correct']}/{PROBLEMS} "
              f"({after['called_calculator']} called the calculator), base {base['correct']}/{PROBLEMS} "
              f"({base['called_calculator']} called it)")
    assert after["success_rate"] >= 0.8, after
    assert after["right_calculation"] >= after["correct"] - 2  # solved through the calculator, not by heart
    assert base["success_rate"] <= after["success_rate"] - 0.5, (base, after)
