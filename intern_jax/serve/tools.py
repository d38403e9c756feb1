"""OpenAI tool calling on a model's own tool-call format: requests in, tool calls out.

``check_tools`` and ``check_tool_choice`` validate OpenAI's ``tools`` / ``tool_choice`` (a ``ValueError``
names the field); ``render_messages`` turns a conversation with ``tool_calls`` and ``tool`` messages into
plain chat messages in the model's format (``inference.tool_calls``: Hermes' ``<tool_call>`` /
``<tool_response>`` for ChatML models, InternLM2's ``<|plugin|>`` actions and ``environment`` results),
with the tools described in the system message; ``parse_reply`` reads the calls back out of a reply as
OpenAI ``tool_calls``; ``ToolCallStream`` does the same for a streamed reply, passing text through until
a call starts. Forcing a call (``required`` or a named function) is a grammar (``structured.py``).
No decoding and no HTTP here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

from intern_jax.inference.tool_calls import ToolCall, get_protocol, protocol_for_template

PARSERS = ("auto", "internlm2", "hermes")
MARKERS = {"hermes": "<tool_call>", "internlm2": "<|action_start|>"}


def tool_protocol(parser: str, chat_template: str | None):
    """The protocol object for ``--tool-call-parser`` (``auto``: from the chat template)."""
    if parser not in PARSERS:
        raise ValueError(f"tool_call_parser must be one of {list(PARSERS)}, got {parser!r}")
    return get_protocol(protocol_for_template(chat_template) if parser == "auto" else parser)


def read_chat_template(path) -> str:
    """A Jinja chat template file's text, checked to compile (``--chat-template``); ``check_chat_template``
    then renders a conversation with it once the tokenizer is known."""
    from pathlib import Path

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    text = Path(path).read_text(encoding="utf-8")
    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"--chat-template {path}: not a valid Jinja template: {e.message} (line {e.lineno})") from None
    return text


def check_chat_template(tokenizer, source: str = "--chat-template") -> None:
    """Render a short conversation with ``tokenizer``'s template; a template that cannot is a ``ValueError``."""
    sample = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
              {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}]
    try:
        text = tokenizer.apply_chat_template(sample, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - any failure of the template is the user's to fix
        raise ValueError(f"{source}: the template cannot render a system/user/assistant conversation: "
                         f"{type(e).__name__}: {e}") from None
    if "u" not in text or "v" not in text:
        raise ValueError(f"{source}: the template renders no message content (does it loop over 'messages'?)")


def check_tools(tools) -> list[dict]:
    """OpenAI function tools, each ``{"type": "function", "function": {"name", "description"?, "parameters"?}}``."""
    out, seen = [], set()
    for i, tool in enumerate(tools or []):
        where = f"tools.{i}"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ValueError(f"{where}.type: only function tools are supported, got {tool.get('type')!r}"
                             if isinstance(tool, dict) else f"{where}: a tool is an object")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ValueError(f"{where}.function: required, an object with a name and parameters")
        name = fn.get("name")
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-." for c in name):
            raise ValueError(f"{where}.function.name: a non-empty name of letters, digits, _ - or ., got {name!r}")
        if name in seen:
            raise ValueError(f"{where}.function.name: {name!r} is given twice")
        seen.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ValueError(f"{where}.function.parameters: a JSON schema object, got {type(params).__name__}")
        if "description" in fn and not isinstance(fn["description"], str):
            raise ValueError(f"{where}.function.description: must be a string")
        out.append({"type": "function", "function": {**fn, "parameters": params}})
    return out


def check_tool_choice(choice, tools: Sequence[dict]) -> tuple[str, list[str]]:
    """``(mode, names)``: mode ``none`` | ``auto`` | ``required`` and the tools a reply may call."""
    names = [t["function"]["name"] for t in tools]
    if choice is None:
        choice = "auto" if tools else "none"
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise ValueError(f"tool_choice: 'none', 'auto', 'required' or a named function, got {choice!r}")
        if choice != "none" and not tools:
            raise ValueError(f"tool_choice: {choice!r} needs tools")
        return choice, names
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise ValueError('tool_choice: a named function is {"type": "function", "function": {"name": ...}}')
    if name not in names:
        raise ValueError(f"tool_choice: no tool named {name!r}; the tools are {names}")
    return "required", [name]


def render_messages(messages: Sequence[dict], tools: Sequence[dict], protocol) -> list[dict]:
    """Chat messages the model's template renders: ``tools`` described in the (first) system message,
    assistant ``tool_calls`` written as the model writes calls, ``tool`` messages as the format's results.

    ``messages``: ``{"role", "content" (text), "tool_calls"?, "tool_call_id"?, "name"?}``."""
    out, called = [], {}  # tool_call id -> tool name
    for i, m in enumerate(messages):
        role, content = m["role"], m.get("content") or ""
        if role == "developer":
            role = "system"
        if role == "assistant" and m.get("tool_calls"):
            texts = []
            for j, call in enumerate(m["tool_calls"]):
                name, args = _call_of(call, f"messages.{i}.tool_calls.{j}")
                called[call.get("id")] = name
                texts.append(protocol.call_text(ToolCall(name, args)))
            sep = "" if protocol.name == "internlm2" else "\n"
            out.append({"role": "assistant", "content": (content + sep if content else "") + sep.join(texts)})
        elif role == "tool":
            name = called.get(m.get("tool_call_id")) or m.get("name")
            out.append(protocol.result_message(ToolCall(name, {}) if name else None, content))
        else:
            out.append({"role": role, "content": content})
    if tools:
        system = out[0]["content"] if out and out[0]["role"] == "system" else None
        out = protocol.system_messages(list(tools), system) + out[1 if system is not None else 0:]
    return out


def _call_of(call, where: str) -> tuple[str, dict]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError(f"{where}.function: an object with a name and arguments")
    args = fn.get("arguments") or "{}"
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}.function.arguments: not valid JSON ({e.msg})") from None
    if not isinstance(args, dict):
        raise ValueError(f"{where}.function.arguments: must be a JSON object")
    return fn["name"], args


def parse_reply(text: str, protocol, names: Sequence[str]) -> tuple[str | None, list[dict]]:
    """``(content, tool_calls)`` of a reply: OpenAI ``tool_calls`` when it holds well-formed calls of
    known tools (content: the text before them, None if empty); otherwise the whole text and no calls."""
    parsed = protocol.parse(text, list(names))
    if parsed.error is not None or not parsed.calls:
        return text, []
    calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
              "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
             for c in parsed.calls]
    return parsed.text or None, calls


class ToolCallStream:
    """A streamed reply split into content (passed on as it comes, less a possible start of a call held
    back) and, at the end, its tool calls. ``forced``: the whole reply is a call (a grammar made it one)."""

    def __init__(self, protocol, names: Sequence[str], forced: bool = False):
        self.protocol, self.names, self.forced = protocol, list(names), forced
        self.marker = MARKERS.get(protocol.name, "<tool_call>")
        self.text, self.sent, self.in_call = "", 0, forced

    def push(self, piece: str) -> str:
        """The content that can be sent now."""
        self.text += piece
        if self.in_call:
            return ""
        start = self.text.find(self.marker, self.sent)
        if start >= 0:
            self.in_call = True
            end = start
        else:
            held = next((k for k in range(len(self.marker) - 1, 0, -1) if self.text.endswith(self.marker[:k])), 0)
            end = len(self.text) - held
        out, self.sent = self.text[self.sent: end], max(self.sent, end)
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """``(content not sent yet, tool_calls)`` at the end of the reply."""
        content, calls = parse_reply(self.text, self.protocol, self.names)
        if calls:
            return "", calls
        rest, self.sent = self.text[self.sent:], len(self.text)
        return rest, []


class ToolCalls:
    """What a chat request with tools needs to read calls back: the protocol, the tool names, whether a
    grammar forces the reply to be a call."""

    def __init__(self, protocol, names: list[str], forced: bool):
        self.protocol, self.names, self.forced = protocol, names, forced

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self.protocol, self.names, self.forced)
