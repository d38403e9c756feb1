"""Score models on arithmetic word problems solved with the calculator: the agent (Hermes-style calls for
ChatML models) runs every problem, in lockstep batches on the serving engine, and an answer counts when its
last number is the problem's answer.

    python scripts/eval_tools.py --model PATH [--model PATH ...] [--with-base] [--problems FILE] [--limit N]
        [--protocol hermes] [--max-steps 3] [--max-new-tokens 64] [--output FILE.jsonl]

``--problems`` is a JSONL file of ``{"question", "expression", "answer"}`` (default: the held-out problems
scripts/make_tool_data.py wrote, configs/finetune/smollm2_tools_heldout.jsonl). Each ``--model`` (a GGUF
file, a checkpoint or a fine-tuning run directory) prints one line: its success rate, how many runs called
the calculator and how many of those calls computed the answer; ``--with-base`` scores a fine-tuning run's
base model (its run.json's) before the run. ``--output`` writes every run's
``{"model", "question", "expected", "correct", "answer", "stop_reason", "turns", "trace"}``.
Decoding is greedy; the engine's prefix cache computes the shared system message once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from intern_jax import cli  # light: no jax

DEFAULT_PROBLEMS = Path(__file__).resolve().parents[1] / "configs" / "finetune" / "smollm2_tools_heldout.jsonl"


@cli.entry("eval_tools.py")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="a checkpoint or run directory (repeatable)")
    ap.add_argument("--with-base", action="store_true",
                    help="score each fine-tuning run's base model before the run")
    ap.add_argument("--problems", default=str(DEFAULT_PROBLEMS), help="JSONL of question, expression, answer")
    ap.add_argument("--limit", type=int, help="only the first N problems")
    ap.add_argument("--protocol", default="hermes", help="the agent's tool protocol (hermes, internlm2, react)")
    ap.add_argument("--max-steps", type=int, default=3, help="model turns per problem")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="per model turn")
    ap.add_argument("--output", help="write every run (with its trace) to this JSONL file")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)

    from intern_jax.agent import Agent, EngineChatModel
    from intern_jax.agent.tool_sft import calculator_tools, load_problems, score_tool_use
    from intern_jax.checkpoint import load_model
    from intern_jax.serve import Engine, EngineConfig

    models = []
    for path in args.model:
        if args.with_base:
            from intern_jax.checkpoint.run import read_run_json

            models.append(read_run_json(path)["base_model"])
        models.append(path)
    problems = load_problems(args.problems)[: args.limit]
    if not problems:
        raise ValueError(f"--limit {args.limit} leaves no problem")
    cli.sampling_params(max_new_tokens=args.max_new_tokens)  # a bad --max-new-tokens is named before loading
    out = open(args.output, "w", encoding="utf-8") if args.output else None  # noqa: SIM115
    try:
        for path in models:
            start = time.perf_counter()
            model = load_model(path)
            if model.tokenizer is None:
                raise ValueError(f"--model {path} carries no tokenizer; the agent needs one")
            engine = Engine(model, EngineConfig(max_batch_size=len(problems), max_model_len=768))
            agent = Agent(EngineChatModel(engine, args.max_new_tokens), calculator_tools(), args.protocol,
                          max_steps=args.max_steps)
            results = agent.run_many([p.question for p in problems])
            score = score_tool_use(problems, results)
            print(f"{path}: {score['correct']}/{score['problems']} correct ({100 * score['success_rate']:.0f}%); "
                  f"called the calculator in {score['called_calculator']}, with the right calculation in "
                  f"{score['right_calculation']} ({time.perf_counter() - start:.0f}s)", flush=True)
            if out is not None:
                from intern_jax.agent.tool_sft import answer_is_correct

                for p, r in zip(problems, results):
                    row = {"model": str(path), "question": p.question, "expected": p.answer,
                           "correct": answer_is_correct(r.answer, p.answer), **r.to_json()}
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if out is not None:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
