"""Tool-call formats: how tools are shown to a model and how its replies become text and tool calls.

The agents (``intern_jax.agent``, which re-exports these names from ``agent.protocols``) and the HTTP
server (``intern_jax.serve``) both speak these formats, so they live here, below both; this module holds
rendering and parsing only, no agent loop and no serving. Each protocol renders the system message(s)
that describe the tools, the stop strings generation should end at, an assistant's tool call as the text
the model writes (``call_text``), how a tool's result goes back (a message), and
``parse(reply, tool_names) -> Parsed``. Parsers never raise on model output: malformed JSON, an unknown
tool, a missing field or a truncated call becomes ``Parsed.error``, a message the agent feeds back as an
observation. Three protocols:

- ``InternLM2Protocol``: tools in a ``system name=<|plugin|>`` message, calls as
  ``<|action_start|><|plugin|>{"name": ..., "parameters": ...}<|action_end|>``, code as
  ``<|action_start|><|interpreter|>...<|action_end|>``, results as ``environment`` messages
  (the tokenizer's InternLM2 template renders the roles and names);
- ``HermesProtocol``: ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` for ChatML models,
  results in ``<tool_response>`` (sent as a user turn, which every ChatML template renders);
- ``ReActProtocol``: Thought / Action / Action Input / Observation / Final Answer; generation stops at
  ``Observation:`` and only the first action of a reply runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence

INTERPRETER = "python_interpreter"  # the tool name an InternLM2 ``<|interpreter|>`` block calls


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict

    def key(self) -> str:
        return json.dumps([self.name, self.arguments], sort_keys=True, ensure_ascii=False)


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A reply split into ``text`` (thought or answer), ``calls``, and ``error`` (None when it parsed)."""

    text: str
    calls: tuple[ToolCall, ...] = ()
    error: str | None = None

    @property
    def is_final(self) -> bool:
        return self.error is None and not self.calls


def _decode_json_object(text: str) -> tuple[dict | None, str | None]:
    """The first JSON object in ``text`` (trailing text allowed), or an error message."""
    start = text.find("{")
    if start < 0:
        return None, f"expected a JSON object, got {text.strip()[:80]!r}"
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        return None, f"the call is not valid JSON ({e.msg} at position {e.pos}): {text.strip()[:120]!r}"
    except RecursionError:
        return None, "the call's JSON is nested too deeply"
    if not isinstance(value, dict):
        return None, "the call must be a JSON object"
    return value, None


def _call_from_json(obj: dict, tool_names: Sequence[str], args_key: str) -> tuple[ToolCall | None, str | None]:
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None, f'the call has no "name"; write {{"name": <one of {list(tool_names)}>, "{args_key}": {{...}}}}'
    if name not in tool_names:
        return None, f"unknown tool {name!r}; the tools are {list(tool_names)}"
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):  # OpenAI-style arguments given as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return None, f'the "{args_key}" of {name} are not valid JSON ({e.msg})'
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None, f'the "{args_key}" of {name} must be a JSON object, got {args!r}'
    return ToolCall(name, args), None


def _tools_json(schemas: Sequence[dict]) -> str:
    return json.dumps([s["function"] for s in schemas], ensure_ascii=False, indent=2)


class InternLM2Protocol:
    name = "internlm2"
    stop = ("<|action_end|>",)
    ACTION = re.compile(r"<\|action_start\|>\s*<\|(plugin|interpreter)\|>(.*?)(?:<\|action_end\|>|$)", re.S)

    def system_messages(self, schemas: Sequence[dict], system: str | None = None) -> list[dict]:
        plugins = [s for s in schemas if s["function"]["name"] != INTERPRETER]
        out = [{"role": "system", "content": system or "You are a helpful assistant that can use tools."}]
        if any(s["function"]["name"] == INTERPRETER for s in schemas):
            out.append({"role": "system", "name": "interpreter", "content": (
                "You can run Python code: write it between <|action_start|><|interpreter|> and <|action_end|>; "
                "the result comes back from the environment.")})
        if plugins:
            out.append({"role": "system", "name": "plugin", "content": _tools_json(plugins)})
        return out

    def assistant_message(self, reply: str) -> dict:
        # generation stopped at <|action_end|>, which is not part of the text: close the action again
        if "<|action_start|>" in reply and not reply.rstrip().endswith("<|action_end|>"):
            reply = reply + "<|action_end|>"
        return {"role": "assistant", "content": reply}

    def call_text(self, call: ToolCall) -> str:
        """A call as the model writes it (what the InternLM2 chat template renders for a ``tool_calls`` entry)."""
        if call.name == INTERPRETER and set(call.arguments) == {"code"}:
            return f"<|action_start|><|interpreter|>\n{call.arguments['code']}<|action_end|>\n"
        body = json.dumps({"name": call.name, "parameters": call.arguments}, ensure_ascii=False)
        return f"<|action_start|><|plugin|>\n{body}<|action_end|>\n"

    def result_message(self, call: ToolCall | None, content: str) -> dict:
        name = "interpreter" if call is not None and call.name == INTERPRETER else "plugin"
        return {"role": "environment", "name": name, "content": content}

    def parse(self, reply: str, tool_names: Sequence[str]) -> Parsed:
        m = self.ACTION.search(reply)
        if m is None:
            if "<|action_start|>" in reply:
                return Parsed(reply, error="<|action_start|> must be followed by <|plugin|> or <|interpreter|>")
            return Parsed(reply.strip())
        text, kind, body = reply[: m.start()].strip(), m.group(1), m.group(2)
        if kind == "interpreter":
            if INTERPRETER not in tool_names:
                return Parsed(text, error=f"the interpreter is not available; the tools are {list(tool_names)}")
            code = body.strip("\n")
            code = re.sub(r"^```(?:python)?\n|\n?```\s*$", "", code.strip())
            if not code.strip():
                return Parsed(text, error="the interpreter call holds no code")
            return Parsed(text, (ToolCall(INTERPRETER, {"code": code}),))
        obj, err = _decode_json_object(body)
        if err:
            return Parsed(text, error=err)
        call, err = _call_from_json(obj, [n for n in tool_names if n != INTERPRETER], "parameters")
        return Parsed(text, error=err) if err else Parsed(text, (call,))


class HermesProtocol:
    name = "hermes"
    stop = ()
    CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.S)

    def system_messages(self, schemas: Sequence[dict], system: str | None = None) -> list[dict]:
        tools = "\n".join(json.dumps(s, ensure_ascii=False) for s in schemas)
        content = ((system or "You are a helpful assistant.") + "\n\n# Tools\n\nYou may call one or more functions "
                   "to assist with the user query.\n\nYou are provided with function signatures within "
                   f"<tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\nFor each function call, return a "
                   "json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
                   '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
        return [{"role": "system", "content": content}]

    def assistant_message(self, reply: str) -> dict:
        return {"role": "assistant", "content": reply}

    def call_text(self, call: ToolCall) -> str:
        """A call as the model writes it: ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``."""
        body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
        return f"<tool_call>\n{body}\n</tool_call>"

    def result_message(self, call: ToolCall | None, content: str) -> dict:
        body = json.dumps({"name": call.name, "content": content}, ensure_ascii=False) if call else content
        return {"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"}

    def parse(self, reply: str, tool_names: Sequence[str]) -> Parsed:
        matches = list(self.CALL.finditer(reply))
        if not matches:
            return Parsed(reply.strip())
        text = reply[: matches[0].start()].strip()
        calls = []
        for m in matches:
            if not m.group(2):
                return Parsed(text, error="the <tool_call> is not closed with </tool_call> (the reply was cut off?)")
            obj, err = _decode_json_object(m.group(1))
            if err:
                return Parsed(text, error=err)
            call, err = _call_from_json(obj, tool_names, "arguments")
            if err:
                return Parsed(text, error=err)
            calls.append(call)
        return Parsed(text, tuple(calls))


class ReActProtocol:
    name = "react"
    stop = ("\nObservation:", "Observation:")
    FIELD = re.compile(r"^\s*(Thought|Action|Action Input|Final Answer)\s*:", re.M)

    def system_messages(self, schemas: Sequence[dict], system: str | None = None) -> list[dict]:
        lines = [f"{s['function']['name']}: {s['function']['description']} Parameters: "
                 f"{json.dumps(s['function']['parameters'], ensure_ascii=False)}" for s in schemas]
        names = ", ".join(s["function"]["name"] for s in schemas)
        content = ((system or "Answer the question as well as you can.") + " You have these tools:\n\n"
                   + "\n".join(lines) + "\n\nUse this format:\n\nThought: what to do next\n"
                   f"Action: the tool to use, one of [{names}]\nAction Input: the tool's arguments as a JSON object\n"
                   "Observation: the tool's result\n... (Thought/Action/Action Input/Observation can repeat)\n"
                   "Thought: I know the answer\nFinal Answer: the answer to the question")
        return [{"role": "system", "content": content}]

    def assistant_message(self, reply: str) -> dict:
        return {"role": "assistant", "content": reply}

    def result_message(self, call: ToolCall | None, content: str) -> dict:
        return {"role": "user", "content": f"Observation: {content}"}

    def parse(self, reply: str, tool_names: Sequence[str]) -> Parsed:
        reply = reply.split("\nObservation:")[0]  # only the first action of a reply runs
        fields: dict[str, str] = {}
        marks = list(self.FIELD.finditer(reply))
        for i, m in enumerate(marks):
            nxt = marks[i + 1] if i + 1 < len(marks) else None
            key = m.group(1)
            if key in fields:  # a second Action: the first one wins
                if key in ("Action", "Action Input"):
                    break
                continue
            fields[key] = reply[m.end(): nxt.start() if nxt else len(reply)].strip()
        thought = fields.get("Thought", "" if marks else reply.strip())
        if "Action" in fields:
            name = fields["Action"].strip().strip("`").strip()
            if name not in tool_names:
                return Parsed(thought, error=f"unknown tool {name!r} in Action; the tools are {list(tool_names)}")
            if "Action Input" not in fields:
                return Parsed(thought, error=f"Action {name} has no Action Input; write Action Input: {{...}}")
            raw = fields["Action Input"].strip().strip("`")
            if raw.startswith("json"):
                raw = raw[4:]
            obj, err = _decode_json_object(raw)
            if err:
                return Parsed(thought, error=f"Action Input of {name}: {err}")
            return Parsed(thought, (ToolCall(name, obj),))
        if "Final Answer" in fields:
            return Parsed(fields["Final Answer"])
        if marks:
            return Parsed(thought, error="no Action and no Final Answer; go on with Action: ... or Final Answer: ...")
        return Parsed(reply.strip())


PROTOCOLS = {p.name: p for p in (InternLM2Protocol, HermesProtocol, ReActProtocol)}


def protocol_for_template(chat_template: str | None) -> str:
    """The tool-call format a chat template speaks: ``internlm2`` for InternLM2's (``<|im_start|>`` with
    ``<|action_start|>`` / ``<|plugin|>``, or no template at all, which means InternLM2's), ``hermes`` otherwise."""
    if not chat_template or "<|action_start|>" in chat_template or "<|plugin|>" in chat_template:
        return "internlm2"
    return "hermes"


def get_protocol(name: str):
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]()
