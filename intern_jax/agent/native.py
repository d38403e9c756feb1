"""OpenAI-style native function calling: the tools go in the request's ``tools``, calls come back as ``tool_calls``.

``OpenAIToolsProtocol`` (``"openai"``) is the protocol of an ``Agent`` whose model is an ``OpenAIChatModel``:
no tool text in the prompt (the server renders the tools in the model's own format), the reply's
``tool_calls`` read back as calls, results sent as ``tool`` messages answering each call's id. A reply
whose calls cannot be used (arguments that are not a JSON object, an unknown tool) becomes a corrective
user message, and the assistant turn is kept without its calls, so no call is left unanswered. The
protocol remembers the ids of the last reply's calls, so one instance serves one conversation at a time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from intern_jax.agent.protocols import Parsed, ToolCall


class Reply(str):
    """An assistant reply's text, with the OpenAI ``tool_calls`` it carried (``[]`` when none)."""

    tool_calls: list[dict]

    def __new__(cls, text: str, tool_calls: list[dict] | None = None):
        reply = super().__new__(cls, text)
        reply.tool_calls = list(tool_calls or [])
        return reply


class OpenAIToolsProtocol:
    name = "openai"
    stop = ()
    native = True  # the agent passes the tools' schemas to the model with every request

    def __init__(self):
        self._ids: list[tuple[ToolCall, str]] = []
        self._usable = True

    def system_messages(self, schemas: Sequence[dict], system: str | None = None) -> list[dict]:
        return [{"role": "system", "content": system}] if system else []

    def parse(self, reply: str, tool_names: Sequence[str]) -> Parsed:
        raw = getattr(reply, "tool_calls", None) or []
        self._ids, self._usable = [], True
        calls = []
        for i, call in enumerate(raw):
            function = call.get("function") or {}
            name, arguments = function.get("name"), function.get("arguments") or "{}"
            try:
                arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
            except json.JSONDecodeError as e:
                return self._refuse(reply, f"the arguments of call {i + 1} ({name}) are not valid JSON ({e.msg}); "
                                           "give a JSON object")
            if not isinstance(arguments, dict):
                return self._refuse(reply, f"the arguments of call {i + 1} ({name}) must be a JSON object")
            if name not in tool_names:
                return self._refuse(reply, f"unknown tool {name!r}; the tools are {list(tool_names)}")
            parsed = ToolCall(name, arguments)
            calls.append(parsed)
            self._ids.append((parsed, call.get("id") or f"call_{i}"))
        return Parsed(str(reply), tuple(calls))

    def _refuse(self, reply: str, error: str) -> Parsed:
        self._ids, self._usable = [], False
        return Parsed(str(reply), (), error)

    def assistant_message(self, reply: str) -> dict:
        message = {"role": "assistant", "content": str(reply) or None}
        if self._usable and self._ids:
            message["tool_calls"] = [
                {"id": id_, "type": "function",
                 "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
                for call, id_ in self._ids]
        elif not self._usable and not str(reply):
            message["content"] = "(a tool call that could not be used)"
        return message

    def result_message(self, call: ToolCall | None, content: str) -> dict:
        if call is None:
            return {"role": "user", "content": content}
        for i, (known, id_) in enumerate(self._ids):
            if known is call:
                del self._ids[i]
                return {"role": "tool", "tool_call_id": id_, "content": content}
        raise ValueError(f"no pending call {call.name} to answer")
