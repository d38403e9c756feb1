"""Tool calls, structured output and n > 1 over HTTP, on the real SmolLM2 (a ChatML model: Hermes-style
``<tool_call>`` calls) with the official ``openai`` client. Forced calls and JSON answers are grammars the
engine enforces with a token mask, so even this 135M model's output parses and validates (checked with
``jsonschema``); a tool result goes back in the Hermes format, checked against the prompt text written out
by hand as Hermes-format ChatML templates render it."""

import json

import jsonschema
import pytest

from intern_jax.inference import SamplingParams, encode_prompt
from intern_jax.inference.generate import generate_text

pytestmark = pytest.mark.slow

MODEL = "smollm2"  # as in tests/conftest.py
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a time zone.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 40}},
                   "required": ["timezone"], "additionalProperties": False}}}
TOOLS = [WEATHER, CLOCK]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def _create(server, **kw):
    # a constrained request's first decode step compiles the masked program: allow for a loaded machine
    return server.client.with_options(timeout=600).chat.completions.create(model=MODEL, **{"temperature": 0, **kw})


def _assert_valid_calls(calls, names=tuple(SCHEMAS)):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_tool_choice_forces_a_call_that_validates_and_streams_the_same(server):
    kw = dict(messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, parallel_tool_calls=False)
    got = _create(server, **kw)
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    _assert_valid_calls(choice.message.tool_calls)
    assert len(choice.message.tool_calls) == 1

    # streamed: the call's id, type and name first, then its arguments in pieces as they are generated
    calls, reasons = {}, []
    for chunk in _create(server, stream=True, **kw):
        for c in chunk.choices:
            reasons += [c.finish_reason] if c.finish_reason else []
            assert not c.delta.content  # no markup as content
            for d in c.delta.tool_calls or []:
                if d.index not in calls:
                    assert d.id and d.type == "function" and d.function.name and not d.function.arguments
                    calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": "", "pieces": 0}
                else:
                    assert d.id is None and not d.function.name and d.function.arguments
                    calls[d.index]["arguments"] += d.function.arguments
                    calls[d.index]["pieces"] += 1
    want = choice.message.tool_calls[0]
    assert reasons == ["tool_calls"] and list(calls) == [0]
    assert (calls[0]["name"], calls[0]["arguments"]) == (want.function.name, want.function.arguments)
    assert calls[0]["pieces"] > 1
    server.idle()


def test_a_named_tool_choice_calls_that_tool(server):
    got = _create(server, messages=ASK, tools=TOOLS, max_tokens=80,
                  tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = got.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"] and got.choices[0].finish_reason == "tool_calls"
    _assert_valid_calls(calls, ["get_time"])


WEATHER_ARGS = {"city": "Paris", "unit": "celsius"}


def _weather_call_and_result() -> list[dict]:
    """A system message, the question, the assistant's call to get_weather and the tool's answer (OpenAI shapes)."""
    return [{"role": "system", "content": "You are a weather bot."}, *ASK,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": json.dumps(WEATHER_ARGS)}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees and sunny"}]


def test_a_tool_result_goes_back_in_hermes_format(server):
    messages = _weather_call_and_result()
    # the prompt as Hermes-format ChatML templates (Qwen2.5, Hermes 2 Pro) write it, by hand
    system = ("You are a weather bot.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
              "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
              + json.dumps(WEATHER) + "\n</tools>\n\nFor each function call, return a json object with function "
              "name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
              '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
    expected = (f"<|im_start|>system\n{system}<|im_end|>\n"
                f"<|im_start|>user\n{ASK[0]['content']}<|im_end|>\n"
                '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
                '{"city": "Paris", "unit": "celsius"}}\n</tool_call><|im_end|>\n'
                '<|im_start|>user\n<tool_response>\n{"name": "get_weather", "content": "22 degrees and sunny"}\n'
                "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    got = _create(server, messages=messages, tools=[WEATHER], max_tokens=24)
    want, result = generate_text(server.decoder, expected, SamplingParams(max_new_tokens=24))
    assert got.usage.prompt_tokens == len(server.decoder.tokenizer.encode(expected))
    message = got.choices[0].message
    if message.tool_calls:  # the model chose to call again: the reply parsed into calls
        assert "<tool_call>" in want and got.choices[0].finish_reason == "tool_calls"
    else:
        assert message.content == want and got.usage.completion_tokens == len(result.tokens[0])


PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 30},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "hobbies": {"type": "array", "items": {"enum": ["chess", "running", "painting", "music"]},
                "minItems": 1, "maxItems": 3},
    "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                 "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": False}},
    "required": ["name", "age", "hobbies", "address"], "additionalProperties": False}


def test_json_schema_and_json_object_answers_parse_and_validate(server):
    # a system prompt long enough (over 256 tokens) that these requests use the cache width, and so the
    # compiled programs, of the tool-call tests above
    system = ("You write records for a registry of fictional people. " + "Each record gives a full name, an age "
              "in years, one to three hobbies and a postal address with a city and a five-digit code. " * 9)
    ask = [{"role": "system", "content": system}, {"role": "user", "content": "Invent a person and describe them."}]
    assert len(encode_prompt(server.decoder.tokenizer, ask)) > 256
    got = _create(server, messages=ask, max_tokens=160,
                  response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    assert got.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(got.choices[0].message.content), PERSON)
    # any object: the grammar keeps the text JSON, the prompt keeps this small model's keys short
    ask[1]["content"] = "Invent a person and describe them as a JSON object with the keys name, age and city."
    got = _create(server, messages=ask, max_tokens=100, response_format={"type": "json_object"})
    assert got.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(got.choices[0].message.content), dict)


CHAT = [{"role": "user", "content": "Say something about the sea."}]


def test_n_choices_are_seed_plus_i_with_summed_usage_plain_and_streamed(server):
    kw = dict(messages=CHAT, max_tokens=8, temperature=0.9)
    alone = [_create(server, seed=40 + i, **kw) for i in range(2)]
    got = _create(server, seed=40, n=2, **kw)
    assert [c.index for c in got.choices] == [0, 1]
    assert [c.message.content for c in got.choices] == [a.choices[0].message.content for a in alone]
    assert got.usage.prompt_tokens == len(encode_prompt(server.decoder.tokenizer, CHAT))
    assert got.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)

    texts, reasons, usage = {0: "", 1: ""}, {}, None
    for chunk in _create(server, seed=40, n=2, stream=True, stream_options={"include_usage": True}, **kw):
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert [texts[0], texts[1]] == [c.message.content for c in got.choices]
    assert sorted(reasons) == [0, 1] and usage.completion_tokens == got.usage.completion_tokens
    server.idle()


BAD_CALL = [*ASK, {"role": "assistant", "tool_calls": [
    {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]}]


@pytest.mark.parametrize("change, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools.0.function.parameters"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "response_format.json_schema.schema"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": BAD_CALL, "tools": TOOLS}, "messages.1.tool_calls.0.function.arguments"),
])
def test_bad_tools_and_response_formats_are_400s_naming_the_field(server, change, param):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, **change}
    status, error, _ = server.raw("POST", "/v1/chat/completions", body)
    assert status == 400, error
    assert error["error"]["param"] == param and error["error"]["message"].startswith(param), error


# A Qwen2.5-style chat template that describes the tools itself (it reads ``tools``), written out here
QWEN_STYLE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen.' }}{%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions.\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}{{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nReturn calls within <tool_call></tool_call> XML tags.<|im_end|>\n" }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\n<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\n<tool_response>\n' + message.content + '\n</tool_response><|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""


def test_a_template_that_reads_tools_renders_them_itself(server):
    import copy

    import jinja2

    from intern_jax.serve import tools as tooling

    messages = _weather_call_and_result()
    # the reference: jinja2 itself renders the template over the conversation in Hugging Face's shapes
    # (a call's arguments as an object, ``tools`` as given, ``tojson`` as json.dumps)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x: json.dumps(x, ensure_ascii=False)
    hf_messages = [messages[0], *ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": WEATHER_ARGS}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "22 degrees and sunny"}]
    expected = env.from_string(QWEN_STYLE).render(messages=hf_messages, tools=TOOLS, add_generation_prompt=True)
    assert "<tools>\n" + json.dumps(WEATHER) in expected and "function signatures" not in expected

    tokenizer = copy.copy(server.decoder.tokenizer)
    tokenizer.chat_template = QWEN_STYLE
    assert tooling.template_renders_tools(QWEN_STYLE)
    assert not tooling.template_renders_tools(server.decoder.tokenizer.chat_template)  # SmolLM2's: injected
    protocol = tooling.tool_protocol("auto", QWEN_STYLE)
    raw = [{"role": m["role"], "content": m.get("content") or "", "tool_calls": m.get("tool_calls"),
            "tool_call_id": m.get("tool_call_id"), "name": None} for m in messages]
    assert tooling.render_prompt(tokenizer, raw, TOOLS, protocol) == expected

    # over HTTP: the server's tokenizer with this template for the length of one request
    live = server.decoder.tokenizer
    saved = live.chat_template
    live.chat_template = QWEN_STYLE
    try:
        got = _create(server, messages=messages, tools=TOOLS, max_tokens=1)
    finally:
        live.chat_template = saved
    assert got.usage.prompt_tokens == len(live.encode(expected))
