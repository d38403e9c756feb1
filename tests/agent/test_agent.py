"""The agent loop over a scripted model (fixed replies): a call then an answer, a malformed call recovered
on the next turn, the step limit, the repeat guard; and one short turn of the real embedded SmolLM2."""

from __future__ import annotations

import json

import pytest

from intern_jax.agent import Agent, DecoderChatModel, OpenAIChatModel, PythonSandbox, ToolRegistry, calculator


class ScriptedModel:
    """Returns the canned replies in order and records what it was asked."""

    def __init__(self, *replies: str):
        self.replies, self.requests = list(replies), []

    def chat(self, messages, stop=()):
        self.requests.append((json.loads(json.dumps(messages)), tuple(stop)))
        return self.replies.pop(0)


def call(expression: str) -> str:
    return f'<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{expression}"}}}}\n</tool_call>'


def test_a_tool_call_then_a_final_answer():
    model = ScriptedModel(call("17 * 3"), "17 times 3 is 51.")
    steps = []
    result = Agent(model, ToolRegistry([calculator]), "hermes", on_step=steps.append).run("What is 17*3?")
    assert result.answer == "17 times 3 is 51." and result.stop_reason == "answer" and result.turns == 2
    assert [s["type"] for s in result.transcript] == ["reply", "call", "result", "reply", "answer"]
    assert steps == result.transcript
    assert result.transcript[2]["content"] == "51" and result.transcript[2]["status"] == "success"
    second_prompt = model.requests[1][0]
    assert second_prompt[-1]["content"] == '<tool_response>\n{"name": "calculator", "content": "51"}\n</tool_response>'
    assert "<tools>" in second_prompt[0]["content"] and second_prompt[1] == {"role": "user", "content": "What is 17*3?"}
    json.dumps(result.to_json())  # the trace is JSON


def test_a_malformed_call_is_fed_back_and_recovered_on_the_next_turn():
    model = ScriptedModel('<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>',
                          call("2 + 2"), "4")
    result = Agent(model, ToolRegistry([calculator]), "hermes").run("2+2?")
    assert result.answer == "4" and result.turns == 3
    error = next(s for s in result.transcript if s["type"] == "parse_error")
    assert "not valid JSON" in error["error"]
    assert "not valid JSON" in model.requests[1][0][-1]["content"]  # the model saw the error


def test_a_bad_argument_is_an_observation_not_a_crash():
    model = ScriptedModel('<tool_call>{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>', "done")
    result = Agent(model, ToolRegistry([calculator]), "hermes").run("?")
    assert result.answer == "done"
    assert "has no argument 'expr'" in result.transcript[2]["content"]


def test_the_step_limit_ends_the_loop():
    model = ScriptedModel(*(call(f"{i} + 1") for i in range(10)))
    result = Agent(model, ToolRegistry([calculator]), "hermes", max_steps=3).run("count")
    assert result.answer is None and result.stop_reason == "max_steps" and result.turns == 3
    assert len(model.requests) == 3 and "within 3 steps" in result.transcript[-1]["text"]


def test_the_same_call_twice_in_a_row_ends_the_loop():
    model = ScriptedModel(call("1 + 1"), call("1 + 1"), "never asked")
    result = Agent(model, ToolRegistry([calculator]), "hermes").run("1+1?")
    assert result.stop_reason == "repeated_call" and result.turns == 2 and len(model.requests) == 2
    assert "repeated the call calculator" in result.transcript[-1]["text"]
    assert sum(s["type"] == "call" for s in result.transcript) == 1


def test_react_loop_passes_stop_strings_and_observations():
    model = ScriptedModel('Thought: math\nAction: calculator\nAction Input: {"expression": "6*7"}',
                          "Thought: done\nFinal Answer: 42")
    result = Agent(model, ToolRegistry([calculator]), "react").run("6*7?")
    assert result.answer == "42"
    messages, stop = model.requests[1]
    assert "Observation:" in stop[0] and messages[-1] == {"role": "user", "content": "Observation: 42"}


def test_internlm2_loop_runs_the_interpreter():
    with PythonSandbox(timeout=5) as sandbox:
        model = ScriptedModel("<|action_start|><|interpreter|>\nprint(sum(range(10)))\n", "The sum is 45.")
        result = Agent(model, ToolRegistry([sandbox.as_tool()]), "internlm2").run("sum of 0..9?")
    assert result.answer == "The sum is 45."
    messages, stop = model.requests[1]
    assert stop == ("<|action_end|>",)
    assert messages[-2]["content"].endswith("<|action_end|>")  # the stop string is put back
    assert messages[-1] == {"role": "environment", "name": "interpreter", "content": "45"}


@pytest.mark.slow
def test_real_model_runs_one_hermes_turn_and_ends_with_a_transcript(smollm2_decoder):
    model = DecoderChatModel(smollm2_decoder, max_new_tokens=8)
    result = Agent(model, ToolRegistry([calculator]), "hermes", max_steps=1).run("What is 12 * 7?")
    assert result.stop_reason in ("answer", "max_steps", "repeated_call")
    assert result.transcript and result.transcript[0]["type"] == "reply" and result.turns == 1


def test_the_loop_runs_over_an_openai_compatible_endpoint(endpoint):
    react_call = 'Thought: math\nAction: calculator\nAction Input: {"expression": "2 * 21"}'
    endpoint.replies[:] = [react_call, "Final Answer: 42"]
    model = OpenAIChatModel(endpoint.url, api_key="secret", max_tokens=32)
    assert model.model == "tiny"
    result = Agent(model, ToolRegistry([calculator]), "react").run("2*21?")
    assert result.stop_reason == "answer" and result.answer == "42" and result.turns == 2
    assert endpoint.bodies[1]["messages"][-1] == {"role": "user", "content": "Observation: 42"}
    first = endpoint.bodies[0]
    assert first["model"] == "tiny" and first["temperature"] == 0.0 and first["max_tokens"] == 32
    assert first["auth"] == "Bearer secret" and first["stop"] == ["\nObservation:", "Observation:"]
    with pytest.raises(ConnectionError, match="HTTP 400.*no more replies"):
        model.chat([{"role": "user", "content": "again"}])
    endpoint.close()
    with pytest.raises(ConnectionError, match="is the server running"):
        OpenAIChatModel(endpoint.url, "tiny").chat([{"role": "user", "content": "hi"}])
