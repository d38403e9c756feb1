"""scripts/agent.py: bad input ends in one clear line and exit status 2 before any model loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args, message", [
    (["--model", "m", "--tools", "calculator,web", "q"], "unknown tool 'web'; choose from calculator, python"),
    (["--model", "m", "   "], "the question is empty"),
    (["--model", "m", "--max-steps", "0", "q"], "--max-steps must be at least 1"),
    (["--model", "/no/such/model", "q"], "/no/such/model"),
    (["--url", "http://127.0.0.1:9/v1", "q"], "is the server running?"),
    (["--model", "m", "--api-key", "k", "q"], "--served-model and --api-key go with --url"),
    (["--model", "m", "--tools", "files", "--root", "/no/such/dir", "q"], "/no/such/dir does not exist"),
])
def test_bad_input_is_one_line_and_status_2(args, message):
    env = {k: v for k, v in os.environ.items() if k != "INTERN_JAX_DEBUG"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/agent.py"), *args], capture_output=True, text=True,
                          env={**env, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("agent.py: error: ") and proc.stdout == ""
    assert len(lines) == 1 or lines[0].startswith("usage:")  # argparse's own errors come with the usage


@pytest.mark.parametrize("names, options, message", [
    (["search"], {}, "the search tool needs documents (--docs)"),
    (["files"], {}, "the files tool needs the directory it may read (--root)"),
    (["search"], {"docs": "/no/such/docs.jsonl"}, "/no/such/docs.jsonl does not exist"),
    ([], {}, "no tools given"),
])
def test_builtin_tools_name_what_is_missing(names, options, message):
    from intern_jax.agent.agent import builtin_tools

    with pytest.raises((ValueError, OSError), match=re.escape(message)):
        builtin_tools(names, **options)


@pytest.mark.parametrize("protocol, replies", [
    ("react", ['Thought: multiply\nAction: calculator\nAction Input: {"expression": "17 * 23"}', "Final Answer: 391"]),
    ("rewoo", ["Plan: multiply.\n#E1 = calculator[17 * 23]", "391"]),
])
def test_the_script_answers_through_an_endpoint_and_prints_the_trace(endpoint, protocol, replies):
    endpoint.replies[:] = list(replies)
    url = endpoint.url
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/agent.py"), "--url", url, "--protocol", protocol,
                           "--json", "What is 17 * 23?"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answer"] == "391" and out["stop_reason"] == "answer" and out["turns"] == 2
    assert "call calculator" in proc.stderr and "result: 391" in proc.stderr


def test_the_script_reads_files_and_searches_through_an_mcp_server(endpoint, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "faq-2", "text": "The warranty lasts two years."}) + "\n"
                    + json.dumps({"id": "faq-1", "text": "Reset the router by holding its button."}) + "\n")
    (tmp_path / "note.txt").write_text("the router is in the attic")
    endpoint.replies[:] = ['Thought: look it up\nAction: search\nAction Input: {"query": "warranty"}',
                           'Thought: and the note\nAction: read_file\nAction Input: {"path": "note.txt"}',
                           "Final Answer: two years"]
    url = endpoint.url
    mcp = f"{sys.executable} {ROOT / 'scripts/tool_server.py'} --transport stdio --tools search --docs {docs}"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/agent.py"), "--url", url, "--protocol", "react",
                           "--tools", "files", "--root", str(tmp_path), "--mcp", mcp, "--json",
                           "How long is the warranty?"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = [s for s in json.loads(proc.stdout)["trace"] if s["type"] == "result"]
    assert json.loads(results[0]["content"])[0]["id"] == "faq-2"
    assert results[1]["content"] == "the router is in the attic"


def test_a_questions_file_gets_one_json_line_per_question(endpoint, tmp_path):
    questions = tmp_path / "questions.txt"
    questions.write_text("What is 2 + 2?\n\nWhat is 17 * 23?\n")
    endpoint.replies[:] = ["Final Answer: 4",
                           'Thought: multiply\nAction: calculator\nAction Input: {"expression": "17 * 23"}',
                           "Final Answer: 391"]
    url = endpoint.url
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/agent.py"), "--url", url, "--protocol", "react",
                           "--questions", str(questions)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(x["question"], x["answer"], x["turns"]) for x in lines] == [("What is 2 + 2?", "4", 1),
                                                                         ("What is 17 * 23?", "391", 2)]
    assert "2 of 2 questions answered" in proc.stderr
