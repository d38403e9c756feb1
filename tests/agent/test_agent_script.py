"""scripts/agent.py: bad input ends in one clear line and exit status 2 before any model loads."""

from __future__ import annotations

import os
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
])
def test_bad_input_is_one_line_and_status_2(args, message):
    env = {k: v for k, v in os.environ.items() if k != "INTERN_JAX_DEBUG"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/agent.py"), *args], capture_output=True, text=True,
                          env={**env, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("agent.py: error: ") and proc.stdout == ""
    assert len(lines) == 1 or lines[0].startswith("usage:")  # argparse's own errors come with the usage
