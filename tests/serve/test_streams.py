"""A streamed reply split into content and tool calls the way OpenAI streams them (no model, no server):
replies written out by hand in the Hermes and InternLM2 formats, cut into random pieces, must give the
text before the call as content (never any markup), each call's id, type and name first, and then its
arguments in several pieces that add up to the arguments object exactly as it is written in the reply."""

import json

import pytest

from intern_jax.inference.tool_calls import HermesProtocol, InternLM2Protocol
from intern_jax.serve.tools import ToolCallStream, parse_reply

NAMES = ["get_weather", "get_time"]
# arguments as a model may write them: uneven spaces, escaped quotes, braces and brackets inside strings
WEATHER_ARGS = '{"city":"Paris \\"}\\" {north}",  "days" : 2, "opts": {"hours": [1, "]}"], "x": null}}'
TIME_ARGS = '{ "timezone": "Europe/Paris" }'
REPLIES = {
    "hermes": ("Let me look that up. ",
               f'<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER_ARGS}}}\n</tool_call>\n'
               # a second call that gives its arguments before its name
               f'<tool_call>\n{{"arguments": {TIME_ARGS}, "name": "get_time"}}\n</tool_call>',
               [("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)]),
    # generation stops at <|action_end|>, which is not part of the text
    "internlm2": ("I will check the forecast.",
                  f'<|action_start|><|plugin|>\n{{"name": "get_weather", "parameters": {WEATHER_ARGS}}}',
                  [("get_weather", WEATHER_ARGS)]),
}
PROTOCOLS = {"hermes": HermesProtocol, "internlm2": InternLM2Protocol}


def _pieces(text: str, rng) -> list[str]:
    """``text`` cut at random into pieces of 1 to 6 characters (tokens, roughly)."""
    out, i = [], 0
    while i < len(text):
        n = int(rng.integers(1, 7))
        out.append(text[i: i + n])
        i += n
    return out


def _run(stream: ToolCallStream, pieces) -> tuple[str, list[dict]]:
    content, deltas = "", []
    for piece in pieces:
        text, more = stream.push(piece)
        content += text
        deltas += more
    rest, more = stream.finish()
    return content + rest, deltas + more


@pytest.mark.parametrize("fmt", ["hermes", "internlm2"])
def test_streamed_call_arguments_come_in_pieces_that_add_up_to_the_written_arguments(fmt, rng):
    prefix, markup, want = REPLIES[fmt]
    protocol = PROTOCOLS[fmt]()
    for _ in range(20):
        stream = ToolCallStream(protocol, NAMES)
        content, deltas = _run(stream, _pieces(prefix + markup, rng))
        assert content == prefix  # all the text before the call, and no markup
        calls: dict[int, dict] = {}
        for d in deltas:
            if d["index"] not in calls:  # a call's first delta: id, type and name, no arguments yet
                assert d["id"].startswith("call_") and d["type"] == "function"
                assert d["function"]["arguments"] == ""
                calls[d["index"]] = {"id": d["id"], "name": d["function"]["name"], "arguments": "", "pieces": 0}
            else:
                assert set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
                calls[d["index"]]["arguments"] += d["function"]["arguments"]
                calls[d["index"]]["pieces"] += 1
        assert [(c["name"], c["arguments"]) for c in calls.values()] == want
        assert calls[0]["pieces"] > 1  # the first call's arguments streamed as they came
        # the same calls as the whole reply parsed at once (ids as streamed)
        _, whole = parse_reply(prefix + markup, protocol, NAMES)
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in whole] == want
        assert [c["id"] for c in stream.calls] == [c["id"] for c in calls.values()]


def test_a_cut_off_call_sends_no_markup_as_content_and_no_calls(rng):
    prefix, markup, _ = REPLIES["hermes"]
    cut = markup[: markup.index('"days"')]  # max_tokens ran out inside the arguments
    stream = ToolCallStream(HermesProtocol(), NAMES)
    content, deltas = _run(stream, _pieces(prefix + cut, rng))
    assert content == prefix and stream.calls == []
    assert "".join(d["function"]["arguments"] for d in deltas) == cut[cut.index('{"city"'):]
    # an unknown tool is never begun as a call: the reply is content, as when it is not streamed
    reply = prefix + '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>'
    stream = ToolCallStream(HermesProtocol(), NAMES)
    content, deltas = _run(stream, _pieces(reply, rng))
    assert (content, deltas, stream.calls) == (reply, [], [])
    assert parse_reply(reply, HermesProtocol(), NAMES) == (reply, [])


INTERPRETER_CODES = [  # bodies as a model writes them after <|action_start|><|interpreter|>
    "\n```python\nimport math\nprint(math.sqrt(2))\n```\n",
    "\nx = '```'  # backticks inside the code\nprint(x)  \n\n",
    '```\nfor i in range(3):\n    print(i, "\\n", end="")\n```',
    "```py\nprint('only ```python and ``` fences are dropped')",
    "s = 'a``'\n```",
    "\n# 中文注释\nprint('π ≈', 22 / 7)\t\n```\n",
]


@pytest.mark.parametrize("closed", [False, True], ids=["stopped_at_action_end", "action_end_in_text"])
@pytest.mark.parametrize("body", INTERPRETER_CODES)
def test_interpreter_code_streams_in_pieces_that_add_up_to_the_parsed_call(body, closed, rng):
    prefix = "Let me compute it."
    reply = prefix + "<|action_start|><|interpreter|>" + body + ("<|action_end|>" if closed else "")
    protocol, names = InternLM2Protocol(), ["python_interpreter", "get_time"]
    (want,) = protocol.parse(reply, names).calls  # the code as the agent would run it
    for _ in range(20):
        stream = ToolCallStream(protocol, names)
        content, deltas = _run(stream, _pieces(reply, rng))
        assert content == prefix
        first, *rest = deltas
        assert first["function"] == {"name": "python_interpreter", "arguments": ""} and first["index"] == 0
        arguments = "".join(d["function"]["arguments"] for d in rest)
        assert all(set(d) == {"index", "function"} and d["index"] == 0 for d in rest)
        assert json.loads(arguments) == want.arguments
        assert len(rest) > 1  # sent as it was written, not whole at the end
        (call,) = stream.calls
        assert (call["id"], call["function"]["arguments"]) == (first["id"], arguments)
        assert parse_reply(reply, protocol, names)[1][0]["function"]["arguments"] == arguments


@pytest.mark.parametrize("reply, names", [
    ("<|action_start|><|interpreter|>\n```python\n  \n```", ["python_interpreter"]),  # no code: not a call
    ("Here: <|action_start|><|interpreter|>print(1)", ["get_time"]),  # the interpreter is not offered
])
def test_interpreter_blocks_that_do_not_parse_are_content_and_never_begin_a_call(reply, names, rng):
    protocol = InternLM2Protocol()
    assert parse_reply(reply, protocol, names) == (reply, [])
    stream = ToolCallStream(protocol, names)
    assert _run(stream, _pieces(reply, rng)) == (reply, []) and stream.calls == []
