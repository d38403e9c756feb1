"""ReWOO: a planner writes the whole plan at once, workers run its tool calls in order, a solver answers.

The planner replies with ``Plan: ...`` lines, each followed by ``#E1 = tool[input]``; an input may use
the evidence of earlier steps (``#E1``). The input is a JSON object of arguments, or plain text for a
tool with one text parameter. A plan that does not parse is sent back once with the error (the
parser never raises); a step's tool error becomes that step's evidence. The solver sees the plan with
the evidence and answers. Results are the ``AgentResult`` of ``agent.py``; one model interface.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable

from intern_jax.agent.agent import AgentResult, ChatModel
from intern_jax.agent.tools import ToolRegistry, ToolResult

STEP = re.compile(r"^\s*(#E\d+)\s*=\s*([\w.-]+)\s*\[(.*)\]\s*$", re.M)
REFERENCE = re.compile(r"#E\d+")


@dataclasses.dataclass(frozen=True)
class PlanStep:
    plan: str
    var: str
    tool: str
    input: str


def parse_plan(text: str, tool_names) -> tuple[list[PlanStep], str | None]:
    """The steps of a planner's reply, or an error message naming what is wrong (never raises)."""
    steps, seen = [], set()
    for m in STEP.finditer(text):
        before = text[: m.start()].rstrip().splitlines()
        plan = before[-1].strip() if before and before[-1].strip().startswith("Plan:") else ""
        var, name, arg = m.group(1), m.group(2), m.group(3).strip()
        if name not in tool_names:
            return [], f"{var} calls unknown tool {name!r}; the tools are {list(tool_names)}"
        if var in seen:
            return [], f"{var} is defined twice; number the steps #E1, #E2, ..."
        unknown = [r for r in REFERENCE.findall(arg) if r not in seen]
        if unknown:
            return [], f"{var} uses {unknown[0]} before it is defined"
        seen.add(var)
        steps.append(PlanStep(plan.removeprefix("Plan:").strip(), var, name, arg))
    if not steps:
        return [], "no steps found; write 'Plan: ...' then '#E1 = tool[input]' for each step"
    return steps, None


def step_arguments(tools: ToolRegistry, name: str, text: str) -> dict | str:
    """A step's input as tool arguments: a JSON object, or text for the tool's one required parameter."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
    tool = tools.tools[name]
    required = [p for p in tool.hints if p not in tool.defaults]
    if len(required) != 1:
        return f"{name} takes {list(tool.hints)}: give its input as a JSON object"
    return {required[0]: stripped.strip("\"'")}


class ReWOOAgent:
    def __init__(self, model: ChatModel, tools: ToolRegistry, *, max_steps: int = 8,
                 on_step: Callable[[dict], None] | None = None):
        self.model, self.tools, self.max_steps, self.on_step = model, tools, max_steps, on_step

    def planner_prompt(self, question: str) -> list[dict]:
        tools = "\n".join(f"{t.name}[input]: {t.description} Input: "
                          f"{json.dumps(t.schema['function']['parameters']['properties'], ensure_ascii=False)}"
                          for t in self.tools)
        system = ("For the task, make a plan that solves it step by step. For each plan, say which tool to use "
                  "and its input, and store its result as evidence #E1, #E2, ... that later inputs may use.\n"
                  f"Tools:\n{tools}\n\nFormat:\nPlan: the first step\n#E1 = tool[input]\nPlan: the next step, "
                  "which may use #E1\n#E2 = tool[input with #E1]\n...")
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]

    def run(self, question: str) -> AgentResult:
        transcript: list[dict] = []

        def record(step: dict) -> None:
            transcript.append(step)
            if self.on_step:
                self.on_step(step)

        messages = self.planner_prompt(question)
        steps, error, turns = [], None, 0
        for _ in range(2):  # one retry with the parse error
            turns += 1
            plan = self.model.chat(messages)
            record({"turn": turns, "type": "plan", "text": plan})
            steps, error = parse_plan(plan, self.tools.names)
            if error is None:
                break
            record({"turn": turns, "type": "parse_error", "error": error})
            messages = [*messages, {"role": "assistant", "content": plan},
                        {"role": "user", "content": f"error: {error}"}]
        if error is not None:
            return AgentResult(None, "bad_plan", turns, transcript, messages)
        evidence: dict[str, str] = {}
        for step in steps[: self.max_steps]:
            text = REFERENCE.sub(lambda m: evidence[m.group(0)], step.input)
            arguments = step_arguments(self.tools, step.tool, text)
            result = (self.tools.call(step.tool, arguments) if isinstance(arguments, dict)
                      else ToolResult.fail(arguments))
            evidence[step.var] = result.content
            record({"turn": turns, "type": "call", "name": step.tool, "arguments": arguments, "var": step.var})
            record({"turn": turns, "type": "result", "name": step.tool, "var": step.var, **result.to_json()})
        worked = "\n".join(f"Plan: {s.plan}\n{s.var} = {s.tool}[{s.input}]\nEvidence: {evidence[s.var]}"
                           for s in steps[: self.max_steps])
        solver = [{"role": "user", "content": (
            "Solve the task with the plans and the evidence below; the evidence may be wrong, use it with care. "
            f"Answer directly.\n\n{worked}\n\nTask: {question}\nResponse:")}]
        turns += 1
        answer = self.model.chat(solver).strip()
        record({"turn": turns, "type": "answer", "text": answer})
        return AgentResult(answer, "answer", turns, transcript, [*messages, *solver])
