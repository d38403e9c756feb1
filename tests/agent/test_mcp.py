"""The tool server (scripts/tool_server.py) as a real subprocess, over MCP stdio and streamable HTTP on loopback,
reached with the official mcp client: the listed schemas are the local @tool schemas, calls run, a bad argument
gets the tool's own error, and an agent uses the remote tools as if they were local."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from intern_jax.agent import Agent
from intern_jax.agent.mcp_tools import MCPTools, RemoteTool
from intern_jax.agent.search import DocumentSearch
from intern_jax.agent.tools import ToolRegistry, calculator

ROOT = Path(__file__).resolve().parents[2]
SERVER = [sys.executable, str(ROOT / "scripts/tool_server.py")]


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    path.write_text(json.dumps({"id": "w", "text": "The warranty lasts two years."}) + "\n"
                    + json.dumps({"id": "r", "text": "Reset the router by holding its button."}) + "\n")
    return path


@pytest.fixture(scope="module")
def local(docs):
    registry = ToolRegistry([calculator])
    registry.add_toolkit(DocumentSearch(docs))
    return registry


@pytest.fixture(scope="module")
def stdio_tools(docs):
    with MCPTools([*SERVER, "--transport", "stdio", "--tools", "calculator,search", "--docs", str(docs)],
                  timeout=60) as remote:
        yield remote


@pytest.fixture(scope="module")
def http_server(docs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*SERVER, "--port", str(port), "--tools", "calculator,search", "--docs", str(docs)],
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/tools", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the tool server did not come up: {proc.stderr.read()}")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


BAD_ARGUMENTS = [("calculator", {"expression": 5}), ("calculator", {"expr": "1 + 1"}), ("calculator", {}),
                 ("search", {"query": "router", "top_k": 99}), ("calculator", {"expression": "2 ** 100000"})]


def _check_remote(tools: list, local: ToolRegistry) -> None:
    assert [t.name for t in tools] == local.names
    assert [t.schema for t in tools] == local.schemas  # the @tool schemas, unchanged by the trip
    registry = ToolRegistry(tools)
    assert registry.call("calculator", {"expression": "17 * 23"}).content == "391"
    hits = json.loads(registry.call("search", '{"query": "warranty"}').content)
    assert hits == json.loads(local.call("search", {"query": "warranty"}).content)
    for name, arguments in BAD_ARGUMENTS:
        got, want = registry.call(name, arguments), local.call(name, arguments)
        assert got.status == "error" and got.error == want.error and got.content == want.content, arguments


def test_the_stdio_server_lists_the_local_schemas_and_runs_the_tools(stdio_tools, local):
    _check_remote(stdio_tools.tools(), local)


def test_the_http_server_speaks_mcp_at_slash_mcp(http_server, local):
    with MCPTools(http_server + "/mcp") as remote:
        _check_remote(remote.tools(), local)


def test_remote_tools_from_the_plain_http_face_behave_as_the_local_ones(http_server, local):
    _check_remote(RemoteTool.from_server(http_server), local)
    with pytest.raises(ConnectionError, match="is the tool server running"):
        RemoteTool.from_server("http://127.0.0.1:9")


def test_the_http_server_lists_and_calls_tools_as_plain_json(http_server, local):
    with urllib.request.urlopen(http_server + "/tools", timeout=10) as response:
        assert json.loads(response.read()) == local.schemas

    def post(name: str, body: bytes):
        request = urllib.request.Request(f"{http_server}/tools/{name}", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert post("calculator", b'{"expression": "2 + 2"}') == (200, {"status": "success", "content": "4", "error": None})
    status, result = post("calculator", b'{"expression": ')
    assert status == 200 and result["status"] == "error" and "not valid JSON" in result["error"]
    status, result = post("weather", b"{}")
    assert status == 404 and "unknown tool 'weather'" in result["error"]


def test_an_agent_runs_on_remote_tools_as_on_local_ones(stdio_tools):
    class Scripted:
        replies = ['<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}\n</tool_call>',
                   "It is 391."]

        def chat(self, messages, stop=()):
            return self.replies.pop(0)

    result = Agent(Scripted(), stdio_tools.registry(), "hermes").run("What is 17 * 23?")
    assert result.answer == "It is 391."
    assert [s["content"] for s in result.transcript if s["type"] == "result"] == ["391"]


def test_rewoo_maps_a_plan_step_to_the_remote_tool_s_one_required_parameter(stdio_tools):
    from intern_jax.agent.rewoo import ReWOOAgent

    class Scripted:
        replies = ["Plan: multiply.\n#E1 = calculator[17 * 23]", "391"]

        def chat(self, messages, stop=()):
            return self.replies.pop(0)

    result = ReWOOAgent(Scripted(), stdio_tools.registry()).run("What is 17 * 23?")
    assert result.answer == "391"
    assert [s["content"] for s in result.transcript if s["type"] == "result"] == ["391"]


def test_a_bad_server_is_named():
    with pytest.raises(ValueError, match="give an http"):
        MCPTools("127.0.0.1:8100")
    with pytest.raises(ConnectionError, match="could not open an MCP session"):
        MCPTools([sys.executable, "-c", "pass"], timeout=10)
