"""Native function calling: the tools travel in the request's ``tools``, calls come back as ``tool_calls`` and
results go back as ``tool`` messages answering each call's id, checked message by message against a recording
endpoint on loopback (the server's side of ``tools`` is tested in tests/serve/test_tools.py)."""

from __future__ import annotations

import pytest

from intern_jax.agent import Agent, OpenAIChatModel, ToolRegistry, calculator


def call(id_: str, name: str, arguments: str) -> dict:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_tools_go_in_the_request_and_results_answer_each_call_id(endpoint):
    endpoint.replies[:] = [{"content": None, "tool_calls": [call("c1", "calculator", '{"expression": "17 * 23"}'),
                                                         call("c2", "calculator", '{"expression": "2 + 2"}')]},
                        {"content": "391 and 4."}]
    registry = ToolRegistry([calculator])
    result = Agent(OpenAIChatModel(endpoint.url), registry, "openai", system="Be brief.").run("17*23 and 2+2?")
    assert result.answer == "391 and 4." and result.turns == 2
    first, second = endpoint.bodies
    assert first["tools"] == registry.schemas == second["tools"]
    assert first["messages"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "17*23 and 2+2?"}]
    assistant, *results = second["messages"][2:]
    assert assistant == {"role": "assistant", "content": None, "tool_calls": [
        call("c1", "calculator", '{"expression": "17 * 23"}'), call("c2", "calculator", '{"expression": "2 + 2"}')]}
    assert results == [{"role": "tool", "tool_call_id": "c1", "content": "391"},
                       {"role": "tool", "tool_call_id": "c2", "content": "4"}]


def test_unusable_calls_become_a_correction_and_leave_no_call_unanswered(endpoint):
    endpoint.replies[:] = [{"content": "", "tool_calls": [call("c1", "calculator", '{"expression": ')]},
                        {"content": None, "tool_calls": [call("c2", "weather", "{}")]},
                        {"content": "done"}]
    result = Agent(OpenAIChatModel(endpoint.url), ToolRegistry([calculator]), "openai").run("q")
    assert result.answer == "done" and [s["type"] for s in result.transcript].count("parse_error") == 2
    third = endpoint.bodies[2]["messages"]
    assert all("tool_calls" not in m for m in third)  # the refused calls were not kept
    assert [m["role"] for m in third] == ["user", "assistant", "user", "assistant", "user"]
    assert "not valid JSON" in third[2]["content"] and "unknown tool 'weather'" in third[4]["content"]


def test_the_native_protocol_needs_a_model_that_takes_tools():
    class TextOnly:  # like DecoderChatModel: chat(messages, stop) and no tools
        def chat(self, messages, stop=()):
            return ""

    with pytest.raises(ValueError, match="sends the tools in the request"):
        Agent(TextOnly(), ToolRegistry([calculator]), "openai")
