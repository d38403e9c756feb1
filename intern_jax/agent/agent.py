"""The agent loop: a model, a protocol (prompt format + parser) and a tool registry (the executor).

``Agent.run(question) -> AgentResult`` asks the model, parses its reply with the protocol, runs the
tool calls and feeds their results (or the parse error) back, until the model answers without a call,
``max_steps`` model turns pass, or the model repeats its previous call with the same arguments (the
repeat guard: it would loop until the step limit otherwise). Every step goes to ``transcript`` (and
to ``on_step`` as it happens). A model is anything with ``chat(messages, stop) -> str``;
``DecoderChatModel`` is the in-process one over ``generate_text``, ``EngineChatModel`` the one over the
serving engine (conversations batched), ``OpenAIChatModel`` any OpenAI-compatible endpoint. This module
holds no prompt text.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Sequence
from typing import Protocol

from intern_jax.agent.files import FileReader
from intern_jax.agent.native import OpenAIToolsProtocol, Reply
from intern_jax.agent.protocols import Parsed, ToolCall, get_protocol
from intern_jax.agent.sandbox import PythonSandbox
from intern_jax.agent.search import DocumentSearch
from intern_jax.agent.tools import ToolRegistry, calculator

BUILTIN_TOOLS = ("calculator", "python", "search", "files")


def builtin_tools(names: Sequence[str], *, docs=None, root=None,
                  **sandbox_options) -> tuple[ToolRegistry, list[PythonSandbox]]:
    """A registry of built-in tools by name and the sandboxes to close after use: ``calculator``, ``python`` (the
    sandboxed interpreter), ``search`` (BM25 over ``docs``, a JSONL file or processed corpus directory) and
    ``files`` (``read_file`` / ``list_files`` under ``root``)."""
    unknown = [n for n in names if n not in BUILTIN_TOOLS]
    if unknown or not names:
        raise ValueError(f"unknown tool {', '.join(map(repr, unknown))}; choose from {', '.join(BUILTIN_TOOLS)}"
                         if unknown else f"no tools given; choose from {', '.join(BUILTIN_TOOLS)}")
    if "search" in names and docs is None:
        raise ValueError("the search tool needs documents (--docs): a JSONL file or a processed corpus directory")
    if "files" in names and root is None:
        raise ValueError("the files tool needs the directory it may read (--root)")
    registry, sandboxes = ToolRegistry(), []
    for name in dict.fromkeys(names):
        if name == "calculator":
            registry.add(calculator)
        elif name == "search":
            registry.add_toolkit(DocumentSearch(docs))
        elif name == "files":
            registry.add_toolkit(FileReader(root))
        else:
            sandboxes.append(PythonSandbox(**sandbox_options))
            registry.add(sandboxes[-1].as_tool())
    return registry, sandboxes


class ChatModel(Protocol):
    def chat(self, messages: list[dict], stop: Sequence[str] = ()) -> str:
        """The assistant's reply to ``messages``; generation ends before any of ``stop``."""


class DecoderChatModel:
    """The in-process model: the tokenizer's chat template and greedy ``generate_text`` over a ``Decoder``."""

    def __init__(self, decoder, max_new_tokens: int = 256):
        self.decoder, self.max_new_tokens = decoder, max_new_tokens

    def chat(self, messages: list[dict], stop: Sequence[str] = ()) -> str:
        from intern_jax.inference import SamplingParams, generate_text

        sampling = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens, stop=tuple(stop))
        text, _ = generate_text(self.decoder, messages, sampling)
        return text


class EngineChatModel:
    """The in-process model over the serving engine (``serve.Engine``): greedy, and ``chat_many`` runs
    several conversations as one offline batch (continuous batching, the prefix cache computing a shared
    system message once)."""

    def __init__(self, engine, max_new_tokens: int = 256):
        self.engine, self.max_new_tokens = engine, max_new_tokens

    def chat(self, messages: list[dict], stop: Sequence[str] = ()) -> str:
        return self.chat_many([messages], stop)[0]

    def chat_many(self, conversations: Sequence[list[dict]], stop: Sequence[str] = ()) -> list[str]:
        from intern_jax.inference import SamplingParams

        sampling = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens, stop=tuple(stop))
        results = self.engine.generate(list(conversations), sampling)
        for r in results:
            if r.error:
                raise RuntimeError(f"the engine failed a request: {r.error}")
        return [r.text for r in results]


class OpenAIChatModel:
    """Any OpenAI-compatible endpoint (``scripts/serve.py`` included): greedy ``/chat/completions``.

    ``model`` None takes the first model ``/models`` lists. A failed request raises ``ConnectionError``
    naming the URL and the server's message: that is not model output, so it ends the run.
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 max_tokens: int = 256, timeout: float = 300.0):
        self.base_url, self.api_key, self.max_tokens, self.timeout = base_url.rstrip("/"), api_key, max_tokens, timeout
        self.model = model or self._request("GET", "/models")["data"][0]["id"]

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:500]
            raise ConnectionError(f"{method} {self.base_url + path} failed with HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConnectionError(f"{method} {self.base_url + path} failed: {reason}; is the server running?") from None

    def chat(self, messages: list[dict], stop: Sequence[str] = (), tools: Sequence[dict] | None = None) -> str:
        """The reply's text; with ``tools`` (OpenAI function schemas, sent in the request: native function
        calling) a ``Reply`` whose ``tool_calls`` are the calls the server read from the model's output."""
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens}
        if stop:
            body["stop"] = list(stop)
        if tools:
            body["tools"] = list(tools)
        message = self._request("POST", "/chat/completions", body)["choices"][0]["message"]
        text = message.get("content") or ""
        return Reply(text, message.get("tool_calls")) if tools else text


@dataclasses.dataclass
class AgentResult:
    answer: str | None
    stop_reason: str  # "answer" | "max_steps" | "repeated_call" | "bad_plan" (ReWOO)
    turns: int
    transcript: list[dict]
    messages: list[dict]

    def to_json(self) -> dict:
        return {"answer": self.answer, "stop_reason": self.stop_reason, "turns": self.turns,
                "trace": self.transcript}


class Agent:
    def __init__(self, model: ChatModel, tools: ToolRegistry, protocol="hermes", *, system: str | None = None,
                 max_steps: int = 6, on_step: Callable[[dict], None] | None = None):
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.model, self.tools, self.system, self.max_steps, self.on_step = model, tools, system, max_steps, on_step
        if protocol == OpenAIToolsProtocol.name:
            protocol = OpenAIToolsProtocol()
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        self.native = getattr(self.protocol, "native", False)
        if self.native and "tools" not in inspect.signature(model.chat).parameters:
            raise ValueError(f"the {self.protocol.name!r} protocol sends the tools in the request; "
                             f"{type(model).__name__} cannot (use OpenAIChatModel with a server that takes tools)")

    def run(self, question: str) -> AgentResult:
        steps = self._steps(question)
        request = next(steps)
        while True:
            try:
                request = steps.send(self._ask(request))
            except StopIteration as done:
                return done.value

    def run_many(self, questions: Sequence[str]) -> list[AgentResult]:
        """``run`` over every question, the conversations in lockstep: each turn asks the model for all the
        unfinished ones at once when it has ``chat_many(conversations, stop)`` (``EngineChatModel``: one
        engine batch), one by one otherwise. Results are those ``run`` gives, in order."""
        results: list[AgentResult | None] = [None] * len(questions)
        live: dict[int, tuple] = {}
        for i, question in enumerate(questions):
            steps = self._steps(question)
            live[i] = (steps, next(steps))
        while live:
            order = list(live)
            if hasattr(self.model, "chat_many") and not self.native:
                replies = self.model.chat_many([live[i][1] for i in order], self.protocol.stop)
            else:
                replies = [self._ask(live[i][1]) for i in order]
            for i, reply in zip(order, replies, strict=True):
                steps = live[i][0]
                try:
                    live[i] = (steps, steps.send(reply))
                except StopIteration as done:
                    results[i] = done.value
                    del live[i]
        return results

    def _ask(self, messages: list[dict]) -> str:
        return (self.model.chat(messages, self.protocol.stop, tools=self.tools.schemas) if self.native
                else self.model.chat(messages, self.protocol.stop))

    def _steps(self, question: str) -> Generator[list[dict], str, AgentResult]:
        """The loop as a generator: yields the messages to answer, receives the model's reply to them, and
        returns the result (so ``run`` and ``run_many`` drive one loop)."""
        messages = [*self.protocol.system_messages(self.tools.schemas, self.system),
                    {"role": "user", "content": question}]
        transcript: list[dict] = []

        def record(step: dict) -> None:
            transcript.append(step)
            if self.on_step:
                self.on_step(step)

        previous: list[str] | None = None
        for turn in range(1, self.max_steps + 1):
            reply = yield list(messages)
            parsed: Parsed = self.protocol.parse(reply, self.tools.names)
            messages.append(self.protocol.assistant_message(reply))
            record({"turn": turn, "type": "reply", "text": reply})
            if parsed.error is not None:
                record({"turn": turn, "type": "parse_error", "error": parsed.error})
                messages.append(self.protocol.result_message(None, f"error: {parsed.error}"))
                previous = None
                continue
            if parsed.is_final:
                record({"turn": turn, "type": "answer", "text": parsed.text})
                return AgentResult(parsed.text, "answer", turn, transcript, messages)
            keys = [c.key() for c in parsed.calls]
            if keys == previous:
                message = (f"stopped: the model repeated the call {self._describe(parsed.calls[0])} with the same "
                           "arguments; its result was already given")
                record({"turn": turn, "type": "stopped", "reason": "repeated_call", "text": message})
                return AgentResult(None, "repeated_call", turn, transcript, messages)
            previous = keys
            for call in parsed.calls:
                record({"turn": turn, "type": "call", "name": call.name, "arguments": call.arguments})
                result = self.tools.call(call.name, call.arguments)
                record({"turn": turn, "type": "result", "name": call.name, **result.to_json()})
                messages.append(self.protocol.result_message(call, result.content))
        record({"turn": self.max_steps, "type": "stopped", "reason": "max_steps",
                "text": f"stopped: no final answer within {self.max_steps} steps"})
        return AgentResult(None, "max_steps", self.max_steps, transcript, messages)

    @staticmethod
    def _describe(call: ToolCall) -> str:
        return f"{call.name}({json.dumps(call.arguments, ensure_ascii=False)})"
