"""Tools over the Model Context Protocol (the official ``mcp`` SDK): serve a ``ToolRegistry``, use any MCP server.

``mcp_server(registry)`` is an MCP server (the SDK's low-level ``Server``) whose ``tools/list`` gives each
tool's own ``@tool`` schema (name, description, and its parameters as the input schema) and whose
``tools/call`` runs ``registry.call``: a tool's error (a bad argument included) is a result with
``is_error`` and the tool's own message, as MCP asks. Calls run one at a time in a worker thread (a
Python sandbox session is one process). ``serve_stdio`` / ``serve_http`` run it over stdio or streamable
HTTP (``/mcp``; the SDK's DNS-rebinding protection is on for loopback hosts); ``http_app`` also answers
``GET /tools`` (the OpenAI schemas) and ``POST /tools/{name}`` (JSON arguments -> the ``ToolResult``)
for clients without MCP (``RemoteTool.from_server(url)`` is theirs).

``MCPTools(server)`` is the client side: it connects to a URL (streamable HTTP) or launches a command
(``["python", "scripts/tool_server.py", ...]``, stdio), keeps the session open on an event loop in a
background thread, and turns every remote tool into a ``Tool`` whose schema is the server's and whose
``call`` goes to the server, so ``ToolRegistry``, the protocols and the agents use it like a local one.
Not here: resources, prompts, sampling, authentication.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

from intern_jax.agent.tools import Tool, ToolRegistry, ToolResult


def mcp_server(registry: ToolRegistry, name: str = "intern-jax-tools"):
    """An MCP ``Server`` offering the tools of ``registry``."""
    import anyio
    import mcp_types as types
    from mcp.server import Server

    lock = threading.Lock()

    def listed() -> list:
        return [types.Tool(name=t.name, description=t.schema["function"]["description"],
                           input_schema=t.schema["function"]["parameters"]) for t in registry]

    async def list_tools(ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listed())

    def call(name: str, arguments: dict | None) -> ToolResult:
        with lock:
            return registry.call(name, arguments or {})

    async def call_tool(ctx, params) -> types.CallToolResult:
        result = await anyio.to_thread.run_sync(call, params.name, params.arguments)
        return types.CallToolResult(content=[types.TextContent(text=result.content)],
                                    is_error=result.status != "success")

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


def serve_stdio(registry: ToolRegistry) -> None:
    """Serve ``registry`` over this process's stdin / stdout until the client closes them."""
    import anyio
    from mcp.server.stdio import stdio_server

    server = mcp_server(registry)

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)


def http_app(registry: ToolRegistry, host: str = "127.0.0.1"):
    """A Starlette app: MCP over streamable HTTP at ``/mcp``, ``GET /tools`` and ``POST /tools/{name}``."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    server = mcp_server(registry)
    lock = threading.Lock()

    async def tools(request: Request) -> JSONResponse:
        return JSONResponse(registry.schemas)

    async def call(request: Request) -> JSONResponse:
        import anyio

        name = request.path_params["name"]
        if name not in registry:
            return JSONResponse(ToolResult.fail(f"unknown tool {name!r}; the tools are {registry.names}").to_json(),
                                status_code=404)
        body = (await request.body()).decode("utf-8", "replace")

        def run() -> ToolResult:
            with lock:
                return registry.call(name, body)

        return JSONResponse((await anyio.to_thread.run_sync(run)).to_json())

    routes = [Route("/tools", tools, methods=["GET"]), Route("/tools/{name}", call, methods=["POST"])]
    return server.streamable_http_app(host=host, custom_starlette_routes=routes)


def serve_http(registry: ToolRegistry, host: str = "127.0.0.1", port: int = 8100) -> None:
    """Serve ``http_app(registry)`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(http_app(registry, host), host=host, port=port, log_level="warning")


@dataclasses.dataclass
class RemoteTool(Tool):
    """A tool of an MCP server: its schema is the server's, its arguments are checked there."""

    remote_schema: dict = dataclasses.field(default_factory=dict)

    @property
    def schema(self) -> dict:
        return self.remote_schema

    def validate(self, arguments) -> str | None:
        if not isinstance(arguments, dict):
            return f"arguments of {self.name} must be a JSON object, got {arguments!r}"
        return None  # the server's tool checks them and names the bad one

    @classmethod
    def from_server(cls, url: str, *, timeout: float = 60.0) -> list[RemoteTool]:
        """The tools of a tool server's plain HTTP face (``GET {url}/tools``, ``POST {url}/tools/NAME``)."""
        import urllib.error
        import urllib.request

        base = url.rstrip("/")

        def request(path: str, body: bytes | None = None):
            req = urllib.request.Request(base + path, data=body, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                return json.loads(e.read())
            except (urllib.error.URLError, OSError) as e:
                raise ConnectionError(f"{base + path} failed: {getattr(e, 'reason', e)}; is the tool server "
                                      "running?") from None

        def caller(name: str):
            def call(**arguments) -> ToolResult:
                reply = request(f"/tools/{name}", json.dumps(arguments).encode())
                return ToolResult(reply["status"], reply["content"], reply.get("error"))

            return call

        return [_remote(caller(s["function"]["name"]), s) for s in request("/tools")]

    def call(self, arguments: dict | str | None = None) -> ToolResult:
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                return ToolResult.fail(f"arguments of {self.name} are not valid JSON ({e.msg} at {e.pos})")
        if err := self.validate(arguments or {}):
            return ToolResult.fail(err)
        try:
            return self.fn(**(arguments or {}))
        except Exception as e:  # a broken connection is the tool's failure, an observation for the model
            return ToolResult.fail(f"{self.name} on the MCP server failed: {type(e).__name__}: {e}")


def _remote(fn, schema: dict) -> RemoteTool:
    """A ``RemoteTool`` for an OpenAI function ``schema``: its parameter names (ReWOO maps a plan step's text to
    the one required parameter) and which of them are optional."""
    function = schema["function"]
    parameters = function.get("parameters") or {}
    properties, required = parameters.get("properties", {}), parameters.get("required", [])
    return RemoteTool(fn=fn, name=function["name"], description=function.get("description") or "",
                      hints=dict.fromkeys(properties, Any), defaults={p: None for p in properties if p not in required},
                      param_docs={p: v.get("description", "") for p, v in properties.items()}, remote_schema=schema)


class MCPTools:
    """A session with an MCP server (a URL, or a command to launch over stdio); ``tools()`` are ``Tool`` objects.

    Use as a context manager or ``close()``; ``timeout`` bounds every request, in seconds."""

    def __init__(self, server: str | list[str], *, timeout: float = 60.0, env: dict[str, str] | None = None):
        from anyio.from_thread import start_blocking_portal
        from mcp import Client, StdioServerParameters

        if isinstance(server, str):
            if not server.startswith(("http://", "https://")):
                raise ValueError(f"MCP server {server!r}: give an http(s) URL (streamable HTTP, e.g. "
                                 "http://127.0.0.1:8100/mcp) or a command as a list of words (stdio)")
            target: Any = server
        elif server and all(isinstance(w, str) for w in server):
            target = StdioServerParameters(command=server[0], args=list(server[1:]), env=env)
        else:
            raise ValueError(f"MCP server command must be a non-empty list of strings, got {server!r}")
        self.server, self.timeout = server, timeout
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
            self._client_cm = self._portal.wrap_async_context_manager(Client(target, read_timeout_seconds=timeout))
            self._client = self._client_cm.__enter__()
        except BaseException as e:
            self._portal_cm.__exit__(None, None, None)
            raise ConnectionError(f"could not open an MCP session with {server}: {type(e).__name__}: {e}") from None

    def tools(self) -> list[RemoteTool]:
        """Every tool the server lists, as a ``Tool`` that calls the server."""
        listed = self._portal.call(self._client.list_tools)
        return [_remote(self._caller(t.name), {"type": "function", "function": {
            "name": t.name, "description": t.description or "", "parameters": t.input_schema}}) for t in listed.tools]

    def registry(self) -> ToolRegistry:
        return ToolRegistry(self.tools())

    def _caller(self, name: str):
        def call(**arguments) -> ToolResult:
            result = self._portal.call(self._client.call_tool, name, arguments)
            text = "\n".join(getattr(c, "text", "") or f"({c.type} content)" for c in result.content)
            if result.is_error:
                return ToolResult("error", text if text.startswith("error:") else f"error: {text}",
                                  text.removeprefix("error: "))
            return ToolResult("success", text)

        return call

    def close(self) -> None:
        if self._portal_cm is not None:
            try:
                self._client_cm.__exit__(None, None, None)
            finally:
                self._portal_cm.__exit__(None, None, None)
                self._portal_cm = None

    def __enter__(self) -> MCPTools:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
