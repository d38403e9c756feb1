"""A Python interpreter tool: code runs in a separate, resource-limited child process per session.

``PythonSandbox`` starts ``python -I`` (isolated mode: no user site, no PYTHON* variables) in its own
process group and a fresh temporary working directory, with ``setrlimit`` limits on address space,
file size and CPU seconds (per call). Requests and replies are JSON lines over pipes, so variables
persist across calls of one session (``stateful=False``: a fresh process for every call; files in the
session directory stay until ``close``). A call past its wall-clock timeout kills the whole process group
and the next call starts a fresh session (state lost, and the reply says so). Output is truncated.

What it protects against: runaway loops (CPU and wall time), memory bombs (address space), huge files
(file size), stray relative paths (the working directory is the session's temp dir, removed on close).
What it does not: it is not a security boundary against hostile code. Without root or namespaces the
child can read files the user can read, write by absolute path, open sockets where a network exists,
signal the user's processes, and fork until the wall-clock timeout kills its process group (no process
limit: ``RLIMIT_NPROC`` counts every process of the user, so it would also fail unrelated work).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from intern_jax.agent.tools import Tool, ToolResult, tool

# The child: read one JSON request per line from stdin, exec the code in one persistent namespace with
# stdout/stderr captured (at most `limit` characters kept), answer one JSON line on the saved fd.
_CHILD = r"""
import io, json, os, resource, signal, sys, traceback
limit, cpu, mem, fsize = (int(a) for a in sys.argv[1:5])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write raises OSError instead of killing us
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
reply = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # code writing to fd 1 cannot corrupt the replies
requests = sys.stdin
sys.stdin = io.StringIO()
class Capped(io.TextIOBase):
    def __init__(self):
        self.parts, self.size, self.dropped = [], 0, 0
    def writable(self):
        return True
    def write(self, s):
        keep = max(0, min(len(s), limit - self.size))
        if keep:
            self.parts.append(s[:keep]); self.size += keep
        self.dropped += len(s) - keep
        return len(s)
    def text(self):
        t = "".join(self.parts)
        return t + (f"\n... ({self.dropped} more characters cut)" if self.dropped else "")
namespace = {"__name__": "__main__"}
for line in requests:
    code = json.loads(line)["code"]
    out, err = Capped(), Capped()
    sys.stdout, sys.stderr = out, err
    used = resource.getrusage(resource.RUSAGE_SELF)
    resource.setrlimit(resource.RLIMIT_CPU, (int(used.ru_utime + used.ru_stime) + cpu + 1, resource.RLIM_INFINITY))
    error = None
    try:
        exec(compile(code, "<code>", "exec"), namespace)
    except BaseException as e:
        error = "".join(traceback.format_exception_only(type(e), e)).strip()
        tb = traceback.extract_tb(e.__traceback__)
        src = code.splitlines()
        lines = [f"  line {f.lineno}: {src[f.lineno - 1].strip()}" for f in tb
                 if f.filename == "<code>" and 0 < (f.lineno or 0) <= len(src)]
        if lines:
            error = "Traceback (in your code):\n" + "\n".join(lines) + "\n" + error
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    reply.write(json.dumps({"stdout": out.text(), "stderr": err.text(), "error": error}) + "\n")
    reply.flush()
"""


class PythonSandbox:
    """One interpreter session; ``run(code) -> ToolResult``; use as a context manager or ``close()``."""

    def __init__(self, timeout: float = 10.0, cpu_seconds: int = 10, memory_mb: int = 512,
                 file_size_mb: int = 16, output_limit: int = 4000, stateful: bool = True):
        self.timeout, self.cpu_seconds, self.memory_mb, self.stateful = timeout, cpu_seconds, memory_mb, stateful
        self.file_size_mb, self.output_limit = file_size_mb, output_limit
        self.workdir: str | None = None
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="intern_jax_sandbox_")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.workdir, "TMPDIR": self.workdir,
               "PYTHONIOENCODING": "utf-8"}
        args = [str(self.output_limit), str(self.cpu_seconds), str(self.memory_mb << 20), str(self.file_size_mb << 20)]
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", _CHILD, *args], cwd=self.workdir, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True, text=True, encoding="utf-8")

    def _kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                stream.close()
            self.proc = None

    def run(self, code: str) -> ToolResult:
        """Run ``code`` in the session; stdout, stderr and the exception (as text) come back; never raises."""
        restarted = ""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._kill()
                restarted = "(the previous session ended; variables were lost)\n"
            self._start()
        try:
            self.proc.stdin.write(json.dumps({"code": code}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._kill()
            return ToolResult.fail("the interpreter process died before the code ran; the next call starts afresh")
        deadline = time.monotonic() + self.timeout
        ready = []
        while not ready:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                return ToolResult.fail(f"the code ran past the {self.timeout:g} s time limit and was stopped; "
                                       "the session was restarted (variables were lost)")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
        line = self.proc.stdout.readline()
        if not line:
            status = self.proc.wait()
            self._kill()
            reason = {-signal.SIGXCPU: f"the {self.cpu_seconds} s CPU limit", -signal.SIGKILL: "a kill signal",
                      -signal.SIGSEGV: "a crash (segmentation fault)"}.get(status, f"exit status {status}")
            return ToolResult.fail(f"the interpreter process was stopped by {reason}; the session was restarted "
                                   "(variables were lost)")
        reply = json.loads(line)
        if not self.stateful:
            self._kill()
        text = restarted + reply["stdout"]
        if reply["stderr"]:
            text += ("\n" if text and not text.endswith("\n") else "") + reply["stderr"]
        if reply["error"]:
            if "MemoryError" in reply["error"]:
                reply["error"] += f" (the session's memory limit is {self.memory_mb} MB)"
            elif "File too large" in reply["error"]:
                reply["error"] += f" (files are limited to {self.file_size_mb} MB)"
            content = (text + ("\n" if text and not text.endswith("\n") else "") + reply["error"]).strip()
            return ToolResult("error", content, reply["error"])
        return ToolResult.ok(text.strip() or "(no output)")

    def close(self) -> None:
        self._kill()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> PythonSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def as_tool(self) -> Tool:
        """The ``python_interpreter`` tool bound to this session."""

        @tool(name="python_interpreter")
        def python_interpreter(code: str) -> ToolResult:
            """Run Python code and return what it prints; variables persist between calls.

            Args:
                code: Python source; use print() to show results.
            """
            return self.run(code)

        return python_interpreter
