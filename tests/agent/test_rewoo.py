"""ReWOO with a scripted model: plan parsing (references, unknown tools, no steps), evidence substitution,
a plan repaired after one error, the solver's answer."""

from __future__ import annotations

from intern_jax.agent import ToolRegistry, calculator, tool
from intern_jax.agent.rewoo import ReWOOAgent, parse_plan


class ScriptedModel:
    """Returns the canned replies in order and records what it was asked."""

    def __init__(self, *replies: str):
        self.replies, self.requests = list(replies), []

    def chat(self, messages, stop=()):
        self.requests.append((messages, tuple(stop)))
        return self.replies.pop(0)


@tool
def lookup(city: str, field: str = "population") -> str:
    """Look up a fact about a city.

    Args:
        city: the city's name.
        field: what to look up.
    """
    return {"Oslo": "700000"}.get(city, "unknown")


TOOLS = ToolRegistry([calculator, lookup])
PLAN = ("Plan: find Oslo's population.\n#E1 = lookup[Oslo]\n"
        "Plan: double it.\n#E2 = calculator[#E1 * 2]\n")


def test_parse_plan_reads_steps_and_plans():
    steps, error = parse_plan(PLAN, TOOLS.names)
    assert error is None and [(s.var, s.tool, s.input) for s in steps] == [("#E1", "lookup", "Oslo"),
                                                                            ("#E2", "calculator", "#E1 * 2")]
    assert steps[0].plan == "find Oslo's population."


def test_parse_plan_errors():
    assert "unknown tool 'web'" in parse_plan("#E1 = web[x]", TOOLS.names)[1]
    assert "uses #E2 before" in parse_plan("#E1 = calculator[#E2 + 1]", TOOLS.names)[1]
    assert "defined twice" in parse_plan("#E1 = calculator[1]\n#E1 = calculator[2]", TOOLS.names)[1]
    assert "no steps" in parse_plan("I would search the web.", TOOLS.names)[1]
    assert "no steps" in parse_plan("#E1 = calculator[1 + ", TOOLS.names)[1]  # truncated


def test_workers_substitute_evidence_and_the_solver_answers():
    model = ScriptedModel(PLAN, "1400000")
    result = ReWOOAgent(model, TOOLS).run("Twice Oslo's population?")
    assert result.answer == "1400000" and result.turns == 2
    results = [s for s in result.transcript if s["type"] == "result"]
    assert [r["content"] for r in results] == ["700000", "1400000"]
    solver_prompt = model.requests[1][0][0]["content"]
    assert "#E2 = calculator[#E1 * 2]\nEvidence: 1400000" in solver_prompt


def test_a_bad_plan_is_sent_back_once_then_repaired():
    model = ScriptedModel("#E1 = search[Oslo]", '#E1 = lookup[{"city": "Oslo", "field": "population"}]', "700000")
    result = ReWOOAgent(model, TOOLS).run("Oslo?")
    assert result.answer == "700000" and result.turns == 3
    assert "unknown tool 'search'" in model.requests[1][0][-1]["content"]


def test_two_bad_plans_end_the_run_and_a_failing_step_is_evidence():
    result = ReWOOAgent(ScriptedModel("no plan", "still none"), TOOLS).run("?")
    assert result.answer is None and result.stop_reason == "bad_plan"
    model = ScriptedModel("#E1 = calculator[1 / 0]", "cannot")
    result = ReWOOAgent(model, TOOLS).run("?")
    assert result.answer == "cannot" and "ZeroDivisionError" in model.requests[1][0][0]["content"]
