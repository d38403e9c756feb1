"""OpenAI tool calling on a model's own tool-call format: requests in, tool calls out.

``check_tools`` and ``check_tool_choice`` validate OpenAI's ``tools`` / ``tool_choice`` (a ``ValueError``
names the field); ``render_messages`` turns a conversation with ``tool_calls`` and ``tool`` messages into
plain chat messages in the model's format (``inference.tool_calls``: Hermes' ``<tool_call>`` /
``<tool_response>`` for ChatML models, InternLM2's ``<|plugin|>`` actions and ``environment`` results),
with the tools described in the system message; ``render_prompt`` uses it, or hands ``tools`` to a chat
template that reads them itself; ``parse_reply`` reads the calls back out of a reply as OpenAI
``tool_calls``; ``ToolCallStream`` does the same for a streamed reply, passing text through until a
call starts and then sending each call's name and its arguments piece by piece as they are generated.
Forcing a call (``required`` or a named function) is a grammar (``structured.py``). No decoding and no
HTTP here.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Sequence

from intern_jax.inference.tool_calls import INTERPRETER, ToolCall, get_protocol, protocol_for_template

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


def template_renders_tools(chat_template: str | None) -> bool:
    """Whether a chat template describes tools itself: it reads the ``tools`` variable (as Qwen2.5's,
    Hermes 2 Pro's and other Hugging Face templates do)."""
    return bool(chat_template) and _reads_tools(chat_template)


@functools.lru_cache(maxsize=16)
def _reads_tools(chat_template: str) -> bool:
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ast = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(chat_template)
    except Exception:  # noqa: BLE001 - a template that does not parse is reported when it renders
        return False
    return "tools" in meta.find_undeclared_variables(ast)


def render_prompt(tokenizer, messages: Sequence[dict], tools: Sequence[dict], protocol) -> str:
    """A conversation (``render_messages``' input) with ``tools`` as the prompt text, generation prompt
    included. A template that reads ``tools`` renders them, the assistants' ``tool_calls`` (arguments as
    objects) and the ``tool`` messages itself, as Hugging Face's ``apply_chat_template(tools=...)`` has it;
    any other template gets ``render_messages``' conversation in the protocol's format."""
    if template_renders_tools(tokenizer.chat_template):
        return tokenizer.apply_chat_template(_template_messages(messages), add_generation_prompt=True,
                                             tools=list(tools) or None)
    return tokenizer.apply_chat_template(render_messages(messages, tools, protocol), add_generation_prompt=True)


def _template_messages(messages: Sequence[dict]) -> list[dict]:
    """Messages for a template that handles tools: OpenAI's shapes, a call's arguments parsed to an object,
    a ``tool`` message named after the call it answers."""
    out, called = [], {}
    for i, m in enumerate(messages):
        role, content = m["role"], m.get("content") or ""
        message = {"role": "system" if role == "developer" else role, "content": content}
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for j, call in enumerate(m["tool_calls"]):
                name, args = _call_of(call, f"messages.{i}.tool_calls.{j}")
                called[call.get("id")] = name
                calls.append({"id": call.get("id"), "type": "function", "function": {"name": name, "arguments": args}})
            message["tool_calls"] = calls
        elif role == "tool":
            message["tool_call_id"] = m.get("tool_call_id")
            name = called.get(m.get("tool_call_id")) or m.get("name")
            if name:
                message["name"] = name
        elif m.get("name"):
            message["name"] = m["name"]
        out.append(message)
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
    known tools (content: the text before them, None if empty); otherwise the whole text and no calls.
    A call's ``arguments`` are the JSON object as the model wrote it (what streaming sends piece by piece)."""
    parsed = protocol.parse(text, list(names))
    if parsed.error is not None or not parsed.calls:
        return text, []
    bodies = [body if kind == "plugin" else "" for kind, body in _call_bodies(text, protocol)]
    calls = [{"id": _call_id(), "type": "function",
              "function": {"name": c.name, "arguments": _raw_arguments(bodies[k] if k < len(bodies) else "",
                                                                       c.arguments)}}
             for k, c in enumerate(parsed.calls)]
    return parsed.text or None, calls


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_ARGUMENTS_KEY = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


def _raw_arguments(body: str, arguments: dict) -> str:
    """The text of ``arguments`` (a parsed call's) in the call ``body`` as the model wrote it; its
    re-serialization when it was not written as an object (a JSON string, say) or cannot be found."""
    for m in _ARGUMENTS_KEY.finditer(body):
        try:
            value, end = json.JSONDecoder().raw_decode(body, m.end())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and value == arguments:
            return body[m.end(): end]
    return json.dumps(arguments, ensure_ascii=False)


def _call_bodies(text: str, protocol) -> list[tuple[str, str]]:
    """``(kind, body)`` of each call (closed or not yet) in ``text``, in the order the protocol's parser
    reads them: Hermes' ``<tool_call>`` blocks, InternLM2's first action (``plugin`` or ``interpreter``)."""
    if protocol.name == "internlm2":
        m = protocol.ACTION.search(text)
        return [(m.group(1), m.group(2))] if m else []
    return [("plugin", m.group(1)) for m in protocol.CALL.finditer(text)]


# -- reading a call's JSON object while it is still being written --------------------------------

_SPACE = " \t\r\n"


def _skip_space(s: str, i: int) -> int:
    while i < len(s) and s[i] in _SPACE:
        i += 1
    return i


def _string_end(s: str, i: int) -> int | None:
    """The index after the JSON string that opens at ``s[i]``, or None if it is not closed yet."""
    j = i + 1
    while j < len(s):
        if s[j] == "\\":
            j += 2
        elif s[j] == '"':
            return j + 1
        else:
            j += 1
    return None


def _value_end(s: str, i: int) -> int | None:
    """The index after the JSON value that starts at ``s[i]``, or None if it is not complete yet."""
    if s[i] == '"':
        return _string_end(s, i)
    if s[i] in "{[":
        depth, j = 0, i
        while j < len(s):
            c = s[j]
            if c == '"':
                j = _string_end(s, j)
                if j is None:
                    return None
                continue
            depth += c in "{["
            depth -= c in "}]"
            if depth == 0:
                return j + 1
            j += 1
        return None
    j = i
    while j < len(s) and s[j] not in ",}]" + _SPACE:
        j += 1
    return j if j < len(s) else None  # a number or literal may go on in the next piece


def _string(text: str) -> str | None:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _partial_call(body: str, args_keys: Sequence[str]) -> tuple[str | None, int | None, int | None]:
    """``(name, start, end)`` of a call object ``{"name": ..., <args key>: {...}}`` read so far: the name
    once its string is closed, where the arguments object starts once it has, and where it ends once
    it is closed (None for what is not there yet). Keys are read at the top level only."""
    name = start = end = None
    found = len(args_keys)  # the rank of the arguments key taken (the first of args_keys wins)
    i = _skip_space(body, 0)
    if i >= len(body) or body[i] != "{":
        return name, start, end
    i += 1
    while True:
        i = _skip_space(body, i)
        if i >= len(body) or body[i] != '"':
            break
        k = _string_end(body, i)
        if k is None:
            break
        key = _string(body[i:k])
        i = _skip_space(body, k)
        if i >= len(body) or body[i] != ":":
            break
        i = _skip_space(body, i + 1)
        if i >= len(body):
            break
        v = _value_end(body, i)
        if key == "name" and body[i] == '"' and v is not None:
            name = _string(body[i:v])
        elif key in args_keys and body[i] == "{" and args_keys.index(key) < found:
            found, start, end = args_keys.index(key), i, v
        if v is None:
            break
        i = _skip_space(body, v)
        if i >= len(body) or body[i] != ",":
            break
        i += 1
    return name, start, end


_FENCES = ("```python\n", "```\n")  # an interpreter block's opening fence, as InternLM2Protocol.parse drops it
_CLOSING = ("\n```", "```")


def _interpreter_code(body: str) -> str:
    """The part of an InternLM2 interpreter call's code that is certain while its ``body`` is still being
    written: whatever follows, ``InternLM2Protocol.parse`` gives code that starts with it. Held back: a
    possible opening fence until it is complete or ruled out, trailing white space, and a tail that may
    still become the closing fence, or ``<|action_end|>``."""
    end = "<|action_end|>"
    body = body[: len(body) - next((k for k in range(len(end) - 1, 0, -1) if body.endswith(end[:k])), 0)]
    lead = body.lstrip()
    if any(f.startswith(lead) for f in _FENCES):
        return ""  # may still be (the start of) a fence
    fence = next((f for f in _FENCES if lead.startswith(f)), "")
    code = lead[len(fence):].rstrip()
    hold = max((k for k in range(1, 5) if any(c.startswith(code[-k:]) for c in _CLOSING) and k <= len(code)),
               default=0)
    return code[: len(code) - hold]


class ToolCallStream:
    """A streamed reply split into content and tool calls as OpenAI streams them. Content is passed on as
    it comes, less a possible start of a call held back; once a call starts, nothing more is content.
    Each call goes out as deltas: first ``{"index", "id", "type", "name", "arguments": ""}`` as soon as its
    name is read, then its arguments object in pieces as the model writes it (concatenated, they are the
    ``arguments`` that ``parse_reply`` gives for the whole reply). ``forced``: the whole reply is a call (a
    grammar made it one). InternLM2's interpreter code goes out as ``{"code": "..."}``, the code JSON-escaped
    in pieces as far as it is certain (fences and trailing white space dropped as the parser drops them),
    once some is. A call whose arguments are not written as an object goes out whole at the end."""

    def __init__(self, protocol, names: Sequence[str], forced: bool = False):
        self.protocol, self.names, self.forced = protocol, list(names), forced
        self.marker = MARKERS.get(protocol.name, "<tool_call>")
        self.args_keys = ("parameters", "arguments") if protocol.name == "internlm2" else ("arguments", "parameters")
        self.text, self.sent = "", 0
        self.start = 0 if forced else None  # where the calls begin in the text
        self.streamed: list[dict] = []  # per call begun: its id, name and the arguments sent so far
        self.calls: list[dict] = []  # the reply's calls, once finished

    def push(self, piece: str) -> tuple[str, list[dict]]:
        """``(content, tool-call deltas)`` that can be sent now."""
        self.text += piece
        content = ""
        if self.start is None:
            start = self.text.find(self.marker, self.sent)
            if start >= 0:
                self.start = end = start
            else:
                held = next((k for k in range(len(self.marker) - 1, 0, -1)
                             if self.text.endswith(self.marker[:k])), 0)
                end = len(self.text) - held
            content, self.sent = self.text[self.sent: end], max(self.sent, end)
        return content, self._deltas() if self.start is not None else []

    def _deltas(self) -> list[dict]:
        out = []
        for k, (kind, body) in enumerate(_call_bodies(self.text[self.start:], self.protocol)):
            if kind == "interpreter":
                out += self._interpreter_deltas(k, body)
                break  # InternLM2 reads one action per reply
            if kind != "plugin":
                break
            name, start, end = _partial_call(body, self.args_keys)
            if k == len(self.streamed):
                if name not in self.names:
                    break  # not begun (or not a known tool: it goes out, if at all, at the end)
                self.streamed.append({"id": _call_id(), "name": name, "arguments": ""})
                out.append({"index": k, "id": self.streamed[k]["id"], "type": "function",
                            "function": {"name": name, "arguments": ""}})
            if start is not None:
                sent = self.streamed[k]["arguments"]
                piece = body[start: len(body) if end is None else end][len(sent):]
                if piece:
                    self.streamed[k]["arguments"] += piece
                    out.append({"index": k, "function": {"arguments": piece}})
            if end is None:
                break  # a later call cannot have begun
        return out

    def _interpreter_deltas(self, k: int, body: str) -> list[dict]:
        if INTERPRETER not in self.names:
            return []
        code, out = _interpreter_code(body), []
        if k == len(self.streamed):
            if not code.strip():
                return []  # not begun until it certainly holds code (an empty block does not parse)
            self.streamed.append({"id": _call_id(), "name": INTERPRETER, "arguments": "", "code": ""})
            out.append({"index": k, "id": self.streamed[k]["id"], "type": "function",
                        "function": {"name": INTERPRETER, "arguments": ""}})
        call = self.streamed[k]
        new = code[len(call["code"]):]
        if new:
            piece = ('{"code": "' if not call["code"] else "") + json.dumps(new, ensure_ascii=False)[1:-1]
            call["code"], call["arguments"] = code, call["arguments"] + piece
            out.append({"index": k, "function": {"arguments": piece}})
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """``(content not sent yet, the tool-call deltas not sent yet)`` at the end of the reply; ``calls``
        then holds the reply's calls (none when it holds no well-formed call)."""
        content, calls = parse_reply(self.text, self.protocol, self.names)
        if not calls:
            if self.streamed:  # a call went out in part but did not parse (cut off, say): no markup as content
                return "", []
            rest, self.sent = self.text[self.sent:], len(self.text)
            return rest, []
        out = []
        for k, call in enumerate(calls):
            fn = call["function"]
            if k < len(self.streamed):
                call["id"] = self.streamed[k]["id"]
                sent = self.streamed[k]["arguments"]
                if fn["arguments"].startswith(sent) and fn["arguments"] != sent:
                    out.append({"index": k, "function": {"arguments": fn["arguments"][len(sent):]}})
            else:  # the name first, then the arguments
                out.append({"index": k, "id": call["id"], "type": "function",
                            "function": {"name": fn["name"], "arguments": ""}})
                out.append({"index": k, "function": {"arguments": fn["arguments"]}})
        self.calls = calls
        return "", out


class ToolCalls:
    """What a chat request with tools needs to read calls back: the protocol, the tool names, whether a
    grammar forces the reply to be a call."""

    def __init__(self, protocol, names: list[str], forced: bool):
        self.protocol, self.names, self.forced = protocol, names, forced

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self.protocol, self.names, self.forced)
