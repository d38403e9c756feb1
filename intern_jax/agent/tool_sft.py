"""A seeded tool-use SFT set (arithmetic word problems solved with the calculator) and its success rate.

``word_problems(n, seed)`` draws problems (add, subtract, multiply, share equally, buy packs and add
some); ``heldout_problems(n)`` draws with another seed and keeps only problems whose calculator
expression no training problem has. ``tool_conversation(problem)`` is the conversation the agent loop
(``Agent.run``) produces and reads when the model gets it right, message for message in the given
protocol: the protocol's system message with the calculator's schema, the question, the assistant's
call as the protocol writes it, the tool's result as the protocol returns it, and the final answer
"The answer is N.". ``direct_conversation`` is a question that needs no tool, answered at once.
``answer_is_correct`` reads the last number of an answer. Nothing here trains or runs a model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from intern_jax.agent.protocols import ToolCall, get_protocol
from intern_jax.agent.tools import ToolRegistry, calculator

TRAIN_SEED, HELDOUT_SEED = 0, 1
EXCLUDED_TRAIN = 2000  # held-out problems avoid the first this-many training problems (any set up to that size)
KINDS = ("add", "subtract", "multiply", "share", "packs")

NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Mo", "Nia",
         "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Vera", "Wes", "Yuki", "Zoe")
ITEMS = ("apples", "books", "stamps", "marbles", "pencils", "cookies", "stickers", "coins", "cards", "shells",
         "bottles", "tickets", "flowers", "beads", "bricks")

DIRECT_QA = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the opposite of early?", "The opposite of early is late."),
    ("What is the opposite of up?", "The opposite of up is down."),
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What do bees make?", "Bees make honey."),
    ("Which day comes after Monday?", "Tuesday comes after Monday."),
    ("Which month comes after March?", "April comes after March."),
    ("Hello!", "Hello! How can I help you today?"),
    ("Thank you!", "You're welcome!"),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("Name a primary colour.", "Red is a primary colour."),
)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A word problem, the calculator expression that solves it and its (integer) answer."""

    question: str
    expression: str
    answer: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _problem(kind: str, rng: np.random.Generator) -> Problem:
    name, items = NAMES[rng.integers(len(NAMES))], ITEMS[rng.integers(len(ITEMS))]
    if kind == "add":
        a, b = (int(x) for x in rng.integers(2, 1000, 2))
        return Problem(f"{name} has {a} {items}. {name} gets {b} more. How many {items} does {name} have now?",
                       f"{a} + {b}", a + b)
    if kind == "subtract":
        a = int(rng.integers(20, 1000))
        b = int(rng.integers(1, a))
        return Problem(f"{name} has {a} {items} and gives {b} of them away. How many {items} are left?",
                       f"{a} - {b}", a - b)
    if kind == "multiply":
        a, b = (int(x) for x in rng.integers(2, 100, 2))
        return Problem(f"A shop packs {items} in boxes of {b}. How many {items} are in {a} boxes?",
                       f"{a} * {b}", a * b)
    if kind == "share":
        a, b = int(rng.integers(2, 100)), int(rng.integers(2, 20))
        return Problem(f"{name} shares {a * b} {items} equally among {b} friends. How many {items} does each "
                       "friend get?", f"{a * b} / {b}", a)
    if kind == "packs":
        a, b, c = int(rng.integers(2, 50)), int(rng.integers(2, 50)), int(rng.integers(1, 100))
        return Problem(f"{name} buys {a} packs of {b} {items} and already has {c}. How many {items} does {name} "
                       "have in total?", f"{a} * {b} + {c}", a * b + c)
    raise ValueError(f"unknown problem kind {kind!r}; choose from {KINDS}")


def word_problems(n: int, seed: int = TRAIN_SEED, exclude: Sequence[Problem] = ()) -> list[Problem]:
    """``n`` distinct problems drawn with ``seed`` (kinds in turn), none with an expression of ``exclude``."""
    if n < 0:
        raise ValueError(f"the number of problems must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    seen = {p.expression for p in exclude}
    out: list[Problem] = []
    while len(out) < n:
        p = _problem(KINDS[len(out) % len(KINDS)], rng)
        if p.expression not in seen:
            seen.add(p.expression)
            out.append(p)
    return out


def heldout_problems(n: int = 100, seed: int = HELDOUT_SEED, train_seed: int = TRAIN_SEED) -> list[Problem]:
    """``n`` evaluation problems drawn with ``seed``, none with the expression of any of the first
    ``EXCLUDED_TRAIN`` problems of ``train_seed`` (``word_problems`` with one seed are prefixes of each other,
    so no training set of up to that many problems shares one)."""
    if seed == train_seed:
        raise ValueError(f"the held-out seed must differ from the training seed, both are {seed}")
    return word_problems(n, seed, exclude=word_problems(EXCLUDED_TRAIN, train_seed))


def calculator_tools() -> ToolRegistry:
    registry = ToolRegistry()
    registry.add(calculator)
    return registry


def final_answer(answer: int) -> str:
    return f"The answer is {answer}."


def tool_conversation(problem: Problem, protocol: str = "hermes") -> list[dict]:
    """The messages of an agent run that answers ``problem`` with one calculator call, as ``Agent.run`` builds
    them (the protocol's system message, the question, the call, the result, the answer)."""
    proto, tools = get_protocol(protocol), calculator_tools()
    call = ToolCall("calculator", {"expression": problem.expression})
    result = tools.call(call.name, call.arguments)
    return [*proto.system_messages(tools.schemas), {"role": "user", "content": problem.question},
            proto.assistant_message(proto.call_text(call)), proto.result_message(call, result.content),
            proto.assistant_message(final_answer(problem.answer))]


def direct_conversation(question: str, answer: str, protocol: str = "hermes") -> list[dict]:
    """A question that needs no tool, with the same system message, answered at once."""
    proto = get_protocol(protocol)
    return [*proto.system_messages(calculator_tools().schemas), {"role": "user", "content": question},
            proto.assistant_message(answer)]


def tool_sft_rows(n: int = 400, seed: int = TRAIN_SEED, direct_every: int = 5, protocol: str = "hermes") -> list[dict]:
    """``n`` training rows (``{"messages": [...]}``): every ``direct_every``-th a question that needs no tool,
    the rest word problems answered through the calculator."""
    if direct_every < 2:
        raise ValueError(f"direct_every must be >= 2 (one direct question in every direct_every rows), "
                         f"got {direct_every}")
    n_direct = n // direct_every
    if n - n_direct > EXCLUDED_TRAIN:
        raise ValueError(f"{n - n_direct} training problems: held-out problems are kept apart from the first "
                         f"{EXCLUDED_TRAIN} only; use at most {EXCLUDED_TRAIN + n_direct} rows")
    problems = iter(word_problems(n - n_direct, seed))
    rng = np.random.default_rng(seed + 1000)
    rows = []
    for i in range(n):
        if i % direct_every == direct_every - 1:
            q, a = DIRECT_QA[rng.integers(len(DIRECT_QA))]
            rows.append({"messages": direct_conversation(q, a, protocol)})
        else:
            rows.append({"messages": tool_conversation(next(problems), protocol)})
    return rows


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def answer_is_correct(answer: str | None, expected: int) -> bool:
    """Whether the last number in ``answer`` (thousands commas allowed) equals ``expected``."""
    numbers = NUMBER.findall(answer or "")
    if not numbers:
        return False
    try:
        return float(numbers[-1].replace(",", "")) == expected
    except ValueError:
        return False


def load_problems(path) -> list[Problem]:
    """Problems from a JSONL file of ``{"question", "expression", "answer"}`` (``scripts/make_tool_data.py``'s
    held-out file)."""
    import json  # noqa: PLC0415

    problems = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append(Problem(str(row["question"]), str(row["expression"]), int(row["answer"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with question, expression and an "
                                 f"integer answer ({type(e).__name__}: {e})") from None
    if not problems:
        raise ValueError(f"{path} holds no problems")
    return problems


def score_tool_use(problems: Sequence[Problem], results) -> dict:
    """Success rate of agent results (``AgentResult``s, in the order of ``problems``): an answer whose last number
    is the problem's; also how many runs called the calculator and how many did so with the right expression's
    value."""
    if len(problems) != len(results):
        raise ValueError(f"{len(problems)} problems but {len(results)} results")
    correct = called = right_call = 0
    for problem, result in zip(problems, results):
        correct += answer_is_correct(result.answer, problem.answer)
        calls = [s for s in result.transcript if s["type"] == "result" and s["name"] == "calculator"]
        called += bool(calls)
        right_call += any(s.get("content") == str(problem.answer) for s in calls)
    n = len(problems)
    return {"problems": n, "correct": correct, "success_rate": correct / n, "called_calculator": called,
            "right_calculation": right_call}
