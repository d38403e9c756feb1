"""The tool-use SFT set: seeded and deterministic, held-out problems apart from the training ones, every call
read back by our own parser computing the stated answer (recomputed with Python's arithmetic), conversations
identical to the agent loop's own, the committed files what the generator writes; and the agent run over
many questions in lockstep giving what one-at-a-time runs give."""

from __future__ import annotations

import ast
import json
import operator
import re
from pathlib import Path

import pytest

from intern_jax.agent import Agent, HermesProtocol
from intern_jax.agent.tool_sft import (
    EXCLUDED_TRAIN,
    Problem,
    answer_is_correct,
    calculator_tools,
    heldout_problems,
    load_problems,
    score_tool_use,
    tool_sft_rows,
    word_problems,
)

ROOT = Path(__file__).resolve().parents[2]
TRAIN_FILE = ROOT / "configs" / "finetune" / "smollm2_tools.jsonl"
HELDOUT_FILE = ROOT / "configs" / "finetune" / "smollm2_tools_heldout.jsonl"
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def python_value(expression: str):
    """The expression's value by Python's own arithmetic (numbers and + - * / only)."""
    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise AssertionError(f"unexpected syntax in {expression!r}: {ast.dump(node)}")
    return walk(ast.parse(expression, mode="eval").body)


def test_the_generator_is_seeded_and_deterministic(seed):
    assert tool_sft_rows(30, seed=seed) == tool_sft_rows(30, seed=seed)
    assert tool_sft_rows(30, seed=seed) != tool_sft_rows(30, seed=seed + 1)
    assert word_problems(50, seed) == word_problems(50, seed)
    # a longer draw starts with the shorter one: the held-out exclusion of the first problems covers any set
    assert word_problems(80, seed)[:50] == word_problems(50, seed)
    assert len({p.expression for p in word_problems(200, seed)}) == 200


def test_heldout_problems_share_no_problem_with_the_training_set():
    train = word_problems(EXCLUDED_TRAIN)
    heldout = heldout_problems(100)
    assert len(heldout) == 100
    assert not {p.expression for p in heldout} & {p.expression for p in train}
    assert not {p.question for p in heldout} & {p.question for p in train}
    # and the committed files: no held-out question or calculation appears in any training conversation
    train_text = TRAIN_FILE.read_text()
    for p in load_problems(HELDOUT_FILE):
        assert json.dumps(p.question)[1:-1] not in train_text
        assert f'\\"expression\\": \\"{p.expression}\\"' not in train_text
    with pytest.raises(ValueError, match="must differ"):
        heldout_problems(5, seed=0, train_seed=0)


def test_every_training_call_parses_and_computes_the_stated_answer(seed):
    parser, direct, tooled = HermesProtocol(), 0, 0
    for row in tool_sft_rows(60, seed=seed):
        messages = row["messages"]
        assistant = [m for m in messages if m["role"] == "assistant"]
        question = messages[1]["content"]
        first = parser.parse(assistant[0]["content"], ["calculator"])
        assert first.error is None, first.error
        if not first.calls:  # a question that needs no tool: answered at once
            direct += 1
            assert len(messages) == 3 and "<tool_call>" not in assistant[0]["content"]
            continue
        tooled += 1
        (call,) = first.calls
        assert call.name == "calculator"
        value = python_value(call.arguments["expression"])
        assert value == int(value)
        # the expression's numbers are the question's, the tool's reply is the value, the answer states it
        assert set(re.findall(r"\d+", call.arguments["expression"])) <= set(re.findall(r"\d+", question))
        assert json.loads(messages[3]["content"].split("\n")[1])["content"] == str(int(value))
        final = parser.parse(assistant[1]["content"], ["calculator"])
        assert final.is_final and re.fullmatch(rf"The answer is {int(value)}\.", final.text)
    assert direct == 12 and tooled == 48


class ScriptedModel:
    """Answers each conversation from a table: the reply for (question, turn)."""

    def __init__(self, replies: dict[str, list[str]]):
        self.replies, self.batches = replies, []

    def chat(self, messages, stop=()):
        turn = sum(m["role"] == "assistant" for m in messages)
        return self.replies[messages[1]["content"]][turn]


class BatchedScriptedModel(ScriptedModel):
    def chat_many(self, conversations, stop=()):
        self.batches.append(len(conversations))
        return [self.chat(m, stop) for m in conversations]


def test_training_conversations_are_the_agent_loops_own_messages(seed):
    """Replaying a row's assistant turns through the agent rebuilds the row message for message."""
    rows = tool_sft_rows(10, seed=seed)
    replies = {r["messages"][1]["content"]: [m["content"] for m in r["messages"] if m["role"] == "assistant"]
               for r in rows}
    agent = Agent(ScriptedModel(replies), calculator_tools(), "hermes")
    for row in rows:
        result = agent.run(row["messages"][1]["content"])
        assert result.messages == row["messages"]
        assert result.stop_reason == "answer"


def test_run_many_in_lockstep_gives_what_run_gives_and_is_scored():
    problems = [Problem("q1", "2 + 3", 5), Problem("q2", "4 * 5", 20), Problem("q3", "9 - 1", 8)]
    call = HermesProtocol().call_text
    from intern_jax.agent import ToolCall

    replies = {
        "q1": [call(ToolCall("calculator", {"expression": "2 + 3"})), "The answer is 5."],
        "q2": ["It is 20."],  # no tool, still right
        "q3": [call(ToolCall("calculator", {"expression": "9 - 2"})), "The answer is 7."],  # wrong calculation
    }
    one_by_one = [Agent(ScriptedModel(replies), calculator_tools(), "hermes").run(q) for q in replies]
    model = BatchedScriptedModel(replies)
    together = Agent(model, calculator_tools(), "hermes").run_many(list(replies))
    assert model.batches == [3, 2]  # the first turn of all three, then the two that called the tool
    assert [r.to_json() for r in together] == [r.to_json() for r in one_by_one]
    assert score_tool_use(problems, together) == {"problems": 3, "correct": 2, "success_rate": 2 / 3,
                                                  "called_calculator": 2, "right_calculation": 1}


@pytest.mark.parametrize("answer,expected,ok", [
    ("The answer is 1705.", 1705, True), ("1,705 apples", 1705, True), ("It is 43, not 42.", 42, True),
    ("The answer is 17050.", 1705, False), (None, 3, False), ("no number", 3, False), ("-4", -4, True),
])
def test_answer_is_correct_reads_the_last_number(answer, expected, ok):
    assert answer_is_correct(answer, expected) is ok


def test_the_committed_files_are_the_generators_output_and_fit_the_training_rows(tmp_path, smollm2):
    import importlib.util

    from intern_jax.data.sft import render_messages

    spec = importlib.util.spec_from_file_location("make_tool_data", ROOT / "scripts" / "make_tool_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--output", str(tmp_path / "t.jsonl"), "--heldout", str(tmp_path / "h.jsonl")]) == 0
    assert (tmp_path / "t.jsonl").read_text() == TRAIN_FILE.read_text()
    assert (tmp_path / "h.jsonl").read_text() == HELDOUT_FILE.read_text()
    # the longest conversation fits the config's rows, and the loss covers exactly the assistant turns
    rows = [json.loads(line) for line in TRAIN_FILE.read_text().splitlines()]
    longest = max(rows, key=lambda r: sum(len(m["content"]) for m in r["messages"]))
    example = render_messages(smollm2.tokenizer, longest["messages"])
    assert len(example["tokens"]) <= 384
    learned = smollm2.tokenizer.decode([int(t) for t, w in zip(example["tokens"], example["token_loss"]) if w])
    assistant = [m["content"] for m in longest["messages"] if m["role"] == "assistant"]
    assert learned == "<|im_end|>".join(assistant) + "<|im_end|>"


def test_a_bad_problems_file_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "q", "expression": "1 + 1", "answer": 2}\n{"question": "q", "answer": "x"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: expected a JSON object with question, expression"):
        load_problems(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="holds no problems"):
        load_problems(path)
