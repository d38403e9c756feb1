"""Write the tool-use fine-tuning set and its held-out problems: arithmetic word problems answered with the
calculator, in the agent's own conversation format (Hermes-style ``<tool_call>`` for ChatML models).

    python scripts/make_tool_data.py [--output configs/finetune/smollm2_tools.jsonl] [--rows 400]
        [--heldout configs/finetune/smollm2_tools_heldout.jsonl] [--heldout-rows 100] [--protocol hermes]

configs/finetune/smollm2_tools.py trains on the committed output of the defaults (seed 0; one row in five
a question that needs no tool); the held-out file holds ``{"question", "expression", "answer"}`` per line
(seed 1, no expression shared with the training problems), which scripts/eval_tools.py scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from intern_jax.agent.tool_sft import heldout_problems, tool_sft_rows

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "finetune"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=CONFIGS / "smollm2_tools.jsonl", help="messages JSONL to write")
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--heldout", type=Path, default=CONFIGS / "smollm2_tools_heldout.jsonl",
                    help="held-out problems JSONL to write")
    ap.add_argument("--heldout-rows", type=int, default=100)
    ap.add_argument("--protocol", default="hermes", help="the tool protocol the conversations speak")
    args = ap.parse_args(argv)
    rows = tool_sft_rows(args.rows, protocol=args.protocol)
    problems = heldout_problems(args.heldout_rows)
    for path, lines in ((args.output, rows), (args.heldout, [p.to_json() for p in problems])):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        print(f"wrote {len(lines)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
