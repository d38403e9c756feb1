"""Answer a question with a model that calls tools: prints each step to stderr as it happens, the answer to stdout.

    python scripts/agent.py --model PATH | --url URL [--served-model NAME] [--api-key KEY]
        [--protocol hermes|internlm2|react|rewoo|openai] [--tools calculator,python,search,files]
        [--docs FILE|DIR] [--root DIR] [--mcp URL|COMMAND ...]
        [--max-steps N] [--max-new-tokens N] [--system TEXT] [--json] "question" | --questions FILE

``--model`` runs the model in process; ``--url`` talks to any OpenAI-compatible endpoint
(``scripts/serve.py`` included; ``--served-model`` defaults to the first one it lists).

``--protocol`` is how tools are shown to the model and how its calls are read: ``hermes``
(``<tool_call>`` JSON, for ChatML models), ``internlm2`` (InternLM2's plugin and interpreter actions),
``react`` (Thought / Action / Action Input / Observation / Final Answer); ``rewoo`` plans every call
first (``#E1 = tool[input]``), runs them, then answers; ``openai`` (with ``--url``) sends the tools in the
request's ``tools`` and reads the server's ``tool_calls`` (native function calling). ``python`` is a sandboxed
interpreter (a separate process with time, memory and file-size limits); ``search`` finds passages of
``--docs`` (a JSONL file with a ``text`` field per line, or a directory written by
``scripts/process_data.py``) by BM25; ``files`` reads text files under ``--root``. ``--mcp`` adds the
tools of a Model Context Protocol server: a URL (streamable HTTP, e.g. ``scripts/tool_server.py``'s
``http://127.0.0.1:8100/mcp``) or a command that speaks MCP on stdio; with ``--mcp`` and no ``--tools``
only the server's tools are offered. Decoding is greedy.
``--json`` prints ``{"answer", "stop_reason", "turns", "trace"}`` instead of the answer; ``--questions FILE``
answers each line of FILE and prints one such object per line, with the ``question``. The exit status is 1
when a loop ended without an answer (step limit, repeated call).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from intern_jax import cli  # light: no jax


def show_step(step: dict) -> None:
    kind = step["type"]
    if kind in ("reply", "plan"):
        text = step["text"].strip()
        print(f"[{step['turn']}] model: {text}", file=sys.stderr, flush=True)
    elif kind == "call":
        print(f"[{step['turn']}] call {step['name']}({json.dumps(step['arguments'], ensure_ascii=False)})",
              file=sys.stderr, flush=True)
    elif kind in ("result", "parse_error", "stopped"):
        text = step.get("content") or step.get("error") or step.get("text")
        print(f"[{step['turn']}] {kind.replace('_', ' ')}: {text}", file=sys.stderr, flush=True)


@cli.entry("agent.py")
def main(argv=None) -> int:
    from intern_jax.agent import Agent, DecoderChatModel, OpenAIChatModel
    from intern_jax.agent.agent import BUILTIN_TOOLS, builtin_tools
    from intern_jax.agent.mcp_tools import MCPTools
    from intern_jax.agent.protocols import PROTOCOLS
    from intern_jax.agent.rewoo import ReWOOAgent
    from intern_jax.agent.tools import ToolRegistry

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("question", nargs="?", help="the question to answer")
    ap.add_argument("--questions", metavar="FILE", help="answer every line of FILE instead, one JSON object per line "
                    "on stdout: {\"question\", \"answer\", \"stop_reason\", \"turns\", \"trace\"}")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="checkpoint: GGUF file, HF directory or native checkpoint")
    where.add_argument("--url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--served-model", help="with --url: the model name (default: the first the server lists)")
    ap.add_argument("--api-key", help="with --url: the server's API key")
    ap.add_argument("--protocol", choices=[*sorted(PROTOCOLS), "openai", "rewoo"], default="hermes",
                    help="rewoo: plan all tool calls first, run them, then answer; openai (with --url): the tools "
                         "go in the request, the server reads the calls (native function calling)")
    ap.add_argument("--tools", help=f"comma-separated, from: {', '.join(BUILTIN_TOOLS)} (default: calculator)")
    ap.add_argument("--docs", help="with --tools search: a JSONL file or a processed corpus directory")
    ap.add_argument("--root", help="with --tools files: the directory whose files the agent may read")
    ap.add_argument("--sandbox", choices=["auto", "namespaces", "process"], default="auto",
                    help="with --tools python: the interpreter's isolation (docs/agents.md; default: namespaces "
                         "where the kernel allows them)")
    ap.add_argument("--mcp", action="append", default=[], metavar="URL|COMMAND",
                    help="an MCP server whose tools the agent may call (repeatable)")
    ap.add_argument("--max-steps", type=int, default=6, help="model turns before giving up")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="per model turn")
    ap.add_argument("--system", help="system message placed before the tool descriptions")
    ap.add_argument("--json", action="store_true", help="print the answer, stop reason, turns and trace as JSON")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)

    if args.url is None and (args.served_model or args.api_key):
        ap.error("--served-model and --api-key go with --url")
    if args.url is None and args.protocol == "openai":
        ap.error("--protocol openai sends the tools to an OpenAI-compatible endpoint: it goes with --url")
    if (args.question is None) == (args.questions is None):
        ap.error("give a question or --questions FILE (not both)")
    if args.questions is not None:
        with open(args.questions, encoding="utf-8") as f:
            questions = [line.strip() for line in f if line.strip()]
        if not questions:
            raise ValueError(f"--questions {args.questions} has no question (one per line)")
    else:
        questions = [cli.utf8_text(args.question, "the question").strip()]
        if not questions[0]:
            raise ValueError("the question is empty; give one, e.g. \"What is 17 * 23?\"")
    if args.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {args.max_steps}")
    cli.sampling_params(max_new_tokens=args.max_new_tokens)  # a bad --max-new-tokens is named before loading
    system = None if args.system is None else cli.utf8_text(args.system, "--system")
    tools_arg = args.tools if args.tools is not None else ("" if args.mcp else "calculator")
    names = [n.strip() for n in tools_arg.split(",") if n.strip()]
    tools, sandboxes = ToolRegistry(), []
    if names:
        tools, sandboxes = builtin_tools(names, docs=args.docs, root=args.root, isolation=args.sandbox)
    servers = []
    try:
        for server in args.mcp:
            servers.append(MCPTools(server if server.startswith(("http://", "https://")) else shlex.split(server)))
            for remote in servers[-1].tools():
                tools.add(remote)
        if args.url is not None:
            chat_model = OpenAIChatModel(args.url, args.served_model, api_key=args.api_key,
                                         max_tokens=args.max_new_tokens)
        else:
            from intern_jax.checkpoint import load_model
            from intern_jax.inference import Decoder

            model = load_model(args.model)
            if model.tokenizer is None:
                raise ValueError(f"--model {args.model} carries no tokenizer; agent.py needs one (a GGUF file or a "
                                 "checkpoint directory with tokenizer.json / tokenizer.model)")
            chat_model = DecoderChatModel(Decoder.from_model(model), max_new_tokens=args.max_new_tokens)
        if args.protocol == "rewoo":
            agent = ReWOOAgent(chat_model, tools, max_steps=args.max_steps, on_step=show_step)
        else:
            agent = Agent(chat_model, tools, args.protocol, system=system, max_steps=args.max_steps,
                          on_step=show_step)
        answered = 0
        for question in questions:
            result = agent.run(question)
            answered += result.answer is not None
            if args.questions is not None:
                print(json.dumps({"question": question, **result.to_json()}, ensure_ascii=False), flush=True)
    finally:
        for sandbox in sandboxes:
            sandbox.close()
        for server in servers:
            server.close()
    if args.questions is not None:
        print(f"{answered} of {len(questions)} questions answered", file=sys.stderr)
    elif args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        print(result.answer if result.answer is not None else f"(no answer: {result.transcript[-1]['text']})")
    return 0 if answered == len(questions) else 1


if __name__ == "__main__":
    sys.exit(main())
