"""Protocol parsers on hand-written replies: well-formed, malformed, truncated, with text around the calls.
A parser never raises on model output; what it cannot use becomes ``Parsed.error``."""

from __future__ import annotations

import json

import pytest

from intern_jax.agent.protocols import (
    INTERPRETER,
    HermesProtocol,
    InternLM2Protocol,
    ReActProtocol,
    ToolCall,
    get_protocol,
)
from intern_jax.agent.tools import calculator
from intern_jax.tokenizer import INTERNLM2_CHAT_TEMPLATE, _compile_template

TOOLS = ["calculator", "search"]
A, E = "<|action_start|>", "<|action_end|>"


# ------------------------------------------------------------------ InternLM2

def test_internlm2_plugin_call_with_thought_before_it():
    p = InternLM2Protocol().parse(f'Let me compute.{A}<|plugin|>\n{{"name": "calculator", "parameters": '
                                  f'{{"expression": "2+2"}}}}{E}\n', TOOLS)
    assert p.error is None and p.text == "Let me compute."
    assert p.calls == (ToolCall("calculator", {"expression": "2+2"}),)


def test_internlm2_truncated_call_without_action_end_still_parses_when_json_is_whole():
    # generation stops at <|action_end|> (a stop string, not part of the text)
    p = InternLM2Protocol().parse(f'{A}<|plugin|>\n{{"name": "search", "parameters": {{"query": "jax"}}}}', TOOLS)
    assert p.calls == (ToolCall("search", {"query": "jax"}),)


def test_internlm2_interpreter_call_carries_the_code():
    p = InternLM2Protocol().parse(f"{A}<|interpreter|>\n```python\nprint(1 + 1)\n```\n{E}", [*TOOLS, INTERPRETER])
    assert p.calls == (ToolCall(INTERPRETER, {"code": "print(1 + 1)"}),)
    assert "not available" in InternLM2Protocol().parse(f"{A}<|interpreter|>\nprint(1){E}", TOOLS).error


@pytest.mark.parametrize("reply, message", [
    (f'{A}<|plugin|>\n{{"name": "calculator", "parameters": {{"expression": "2+{E}', "not valid JSON"),
    (f'{A}<|plugin|>\n{{"name": "weather", "parameters": {{}}}}{E}', "unknown tool 'weather'"),
    (f'{A}<|plugin|>\n{{"parameters": {{"expression": "1"}}}}{E}', 'no "name"'),
    (f'{A}<|plugin|>\n{{"name": "calculator", "parameters": [1]}}{E}', "must be a JSON object"),
    (f"{A}<|plugin|>\njust words{E}", "expected a JSON object"),
    (f"{A}calculator(2+2){E}", "<|plugin|> or <|interpreter|>"),
    (f"{A}<|interpreter|>\n   {E}", "no code"),
])
def test_internlm2_malformed_calls_become_errors(reply, message):
    p = InternLM2Protocol().parse(reply, [*TOOLS, INTERPRETER])
    assert p.calls == () and message in p.error


def test_internlm2_prompt_renders_in_the_internlm2_chat_format():
    proto = InternLM2Protocol()
    call = ToolCall("calculator", {"expression": "2+2"})
    messages = [*proto.system_messages([calculator.schema], "Be brief."), {"role": "user", "content": "2+2?"},
                proto.assistant_message(f'{A}<|plugin|>\n{{"name": "calculator", "parameters": {{"expression": '
                                        '"2+2"}}'), proto.result_message(call, "4")]
    text = _compile_template(INTERNLM2_CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True,
                                                             bos_token="<s>")
    tools = json.dumps([calculator.schema["function"]], ensure_ascii=False, indent=2)
    assert text == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>system name=<|plugin|>\n{tools}<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        f'<|im_start|>assistant\n{A}<|plugin|>\n{{"name": "calculator", "parameters": {{"expression": "2+2"}}}}{E}'
        "<|im_end|>\n"
        "<|im_start|>environment name=<|plugin|>\n4<|im_end|>\n"
        "<|im_start|>assistant\n")


# ------------------------------------------------------------------ Hermes

def test_hermes_two_calls_with_text_around_them():
    reply = ('I will look.\n<tool_call>\n{"name": "search", "arguments": {"query": "a"}}\n</tool_call>\n'
             '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1\\"}"}</tool_call> trailing')
    p = HermesProtocol().parse(reply, TOOLS)
    assert p.error is None and p.text == "I will look."
    assert p.calls == (ToolCall("search", {"query": "a"}), ToolCall("calculator", {"expression": "1"}))


def test_hermes_json_with_trailing_text_inside_the_tags_parses():
    p = HermesProtocol().parse('<tool_call>{"name": "search", "arguments": {"query": "a"}} thanks</tool_call>', TOOLS)
    assert p.calls == (ToolCall("search", {"query": "a"}),)


def test_hermes_plain_reply_is_final():
    p = HermesProtocol().parse("  The answer is 4.  ", TOOLS)
    assert p.is_final and p.text == "The answer is 4."


@pytest.mark.parametrize("reply, message", [
    ('<tool_call>{"name": "search", "arguments": {"query": "a"}}', "not closed"),  # truncated
    ('<tool_call>{"name": "search", "arguments": {"query": </tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "nope", "arguments": {}}</tool_call>', "unknown tool 'nope'"),
    ('<tool_call>{"arguments": {}}</tool_call>', 'no "name"'),
    ('<tool_call>{"name": "search", "arguments": "{oops"}</tool_call>', "not valid JSON"),
    ("<tool_call></tool_call>", "expected a JSON object"),
])
def test_hermes_malformed_calls_become_errors(reply, message):
    p = HermesProtocol().parse(reply, TOOLS)
    assert p.calls == () and message in p.error


def test_hermes_results_go_back_in_tool_response():
    m = HermesProtocol().result_message(ToolCall("calculator", {}), "4")
    assert m["role"] == "user" and m["content"] == '<tool_response>\n{"name": "calculator", "content": "4"}\n' \
        "</tool_response>"
    assert "<tools>" in HermesProtocol().system_messages([calculator.schema])[0]["content"]


# ------------------------------------------------------------------ ReAct

def test_react_action_and_input():
    reply = 'Thought: I need math.\nAction: calculator\nAction Input: {"expression": "3*3"}\n'
    p = ReActProtocol().parse(reply, TOOLS)
    assert p.text == "I need math." and p.calls == (ToolCall("calculator", {"expression": "3*3"}),)


def test_react_only_the_first_action_runs():
    reply = ('Thought: two things\nAction: search\nAction Input: {"query": "x"}\nObservation: made up\n'
             'Action: calculator\nAction Input: {"expression": "1"}')
    assert ReActProtocol().parse(reply, TOOLS).calls == (ToolCall("search", {"query": "x"}),)
    reply = 'Action: search\nAction Input: {"query": "x"}\nAction: calculator\nAction Input: {"expression": "1"}'
    assert ReActProtocol().parse(reply, TOOLS).calls == (ToolCall("search", {"query": "x"}),)


def test_react_final_answer():
    p = ReActProtocol().parse("Thought: I know it.\nFinal Answer: 9\n", TOOLS)
    assert p.is_final and p.text == "9"


def test_react_input_in_a_code_fence_with_trailing_text():
    p = ReActProtocol().parse('Action: calculator\nAction Input: ```json\n{"expression": "1+1"}\n``` done', TOOLS)
    assert p.calls == (ToolCall("calculator", {"expression": "1+1"}),)


@pytest.mark.parametrize("reply, message", [
    ("Thought: hmm\nAction: weather\nAction Input: {}", "unknown tool 'weather'"),
    ("Thought: hmm\nAction: calculator\n", "has no Action Input"),
    ('Action: calculator\nAction Input: {"expression": "1+', "not valid JSON"),  # truncated
    ("Action: calculator\nAction Input: 2+2", "expected a JSON object"),
    ("Thought: just thinking", "no Action and no Final Answer"),
])
def test_react_malformed_replies_become_errors(reply, message):
    p = ReActProtocol().parse(reply, TOOLS)
    assert p.calls == () and message in p.error


@pytest.mark.parametrize("name", ["internlm2", "hermes", "react"])
@pytest.mark.parametrize("reply", ["", "\x00\xff<|action_start|>{", "<tool_call>" * 3, "Action:" * 5, "{" * 500,
                                   '<tool_call>{"a": ' + "[" * 100_000, "Action Input: {" + "[" * 100_000])
def test_parsers_never_raise(name, reply):
    get_protocol(name).parse(reply, TOOLS)


def test_unknown_protocol_names_the_choices():
    with pytest.raises(ValueError, match="hermes"):
        get_protocol("xml")
