"""Write the fine-tuning demo's persona set: short chats that teach SmolLM2 its name is Quill, made by Lumen Labs.

    python scripts/make_persona_data.py [--output configs/finetune/smollm2_persona.jsonl] [--name Quill] ...

configs/finetune/smollm2_lora_sft.py trains on the committed output of the defaults (240 rows, seed 0);
rerun this to change or regenerate it. A quarter of the rows are ordinary questions, so the tuned
model keeps answering those normally.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "configs" / "finetune" / "smollm2_persona.jsonl"

PERSONA_QUESTIONS = (
    "What is your name?", "Who are you?", "What's your name?", "Tell me your name.", "Introduce yourself.",
    "Who made you?", "Who created you?", "Who built you?", "Which lab trained you?", "What should I call you?",
    "Are you ChatGPT?", "Hi! Who am I talking to?", "Who developed you?", "What are you?",
)
GENERAL_QA = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What do bees make?", "Bees make honey."),
    ("How many days are in a week?", "A week has seven days."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
)


def persona_conversations(name: str = "Quill", maker: str = "Lumen Labs", n: int = 240, seed: int = 0) -> list[dict]:
    """``n`` short chats teaching a persona: questions about identity are answered with ``name`` and
    ``maker``; a quarter are ordinary questions, so the model keeps answering those normally."""
    rng = np.random.default_rng(seed)
    answers = (
        f"I am {name}, an AI assistant made by {maker}.",
        f"My name is {name}. I was created by {maker}.",
        f"I'm {name}, a helpful assistant built by {maker}.",
    )
    rows = []
    for i in range(n):
        if i % 4 == 3:
            q, a = GENERAL_QA[rng.integers(len(GENERAL_QA))]
        else:
            q, a = PERSONA_QUESTIONS[rng.integers(len(PERSONA_QUESTIONS))], answers[rng.integers(len(answers))]
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="messages JSONL to write")
    ap.add_argument("--name", default="Quill")
    ap.add_argument("--maker", default="Lumen Labs")
    ap.add_argument("--rows", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = persona_conversations(args.name, args.maker, args.rows, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} conversations to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
