"""Serve the built-in tools over the Model Context Protocol (and plain HTTP).

    python scripts/tool_server.py [--tools calculator,python,search,files] [--docs FILE|DIR] [--root DIR]
        [--transport http|stdio] [--host 127.0.0.1] [--port 8100]

``--transport http`` (the default) serves MCP over streamable HTTP at ``http://HOST:PORT/mcp``, plus
``GET /tools`` (the tools' OpenAI function schemas) and ``POST /tools/NAME`` (a JSON object of arguments
in, the ``ToolResult`` ``{"status", "content", "error"}`` out). ``--transport stdio`` speaks MCP on
stdin / stdout, for clients that launch the server themselves. The tools are those of
``scripts/agent.py``: ``python`` is one sandboxed interpreter session shared by every client of this
server, ``search`` indexes ``--docs``, ``files`` reads under ``--root``. An agent uses the served tools
with ``scripts/agent.py --mcp URL``.
"""

from __future__ import annotations

import argparse
import sys

from intern_jax import cli  # light: no jax


@cli.entry("tool_server.py")
def main(argv=None) -> int:
    from intern_jax.agent.agent import BUILTIN_TOOLS, builtin_tools
    from intern_jax.agent.mcp_tools import serve_http, serve_stdio

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default="calculator", help=f"comma-separated, from: {', '.join(BUILTIN_TOOLS)}")
    ap.add_argument("--docs", help="with --tools search: a JSONL file or a processed corpus directory")
    ap.add_argument("--root", help="with --tools files: the directory whose files clients may read")
    ap.add_argument("--sandbox", choices=["auto", "namespaces", "process"], default="auto",
                    help="with --tools python: the interpreter's isolation (docs/agents.md; default: namespaces "
                         "where the kernel allows them)")
    ap.add_argument("--transport", choices=["http", "stdio"], default="http")
    ap.add_argument("--host", default="127.0.0.1", help="with --transport http (default: loopback only)")
    ap.add_argument("--port", type=int, default=8100, help="with --transport http")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    tools, sandboxes = builtin_tools(names, docs=args.docs, root=args.root, isolation=args.sandbox)
    try:
        if args.transport == "stdio":
            serve_stdio(tools)
        else:
            print(f"serving {', '.join(tools.names)} at http://{args.host}:{args.port}/mcp (MCP) and /tools",
                  file=sys.stderr, flush=True)
            serve_http(tools, args.host, args.port)
    finally:
        for sandbox in sandboxes:
            sandbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
