"""A Python interpreter tool: code runs in a separate, resource-limited child process per session.

``PythonSandbox`` starts ``python -I sandbox_child.py`` (isolated mode: no user site, no PYTHON*
variables) in its own process group and a fresh temporary working directory (the session directory),
with ``setrlimit`` limits on address space, file size and CPU seconds (per call), and, where a memory
cgroup can be created (root, or a delegated cgroup v2), ``total_memory_mb`` (twice ``memory_mb`` by
default) for all its processes together. Requests and replies
are JSON lines over pipes, so variables persist across calls of one session (``stateful=False``: a fresh
process for every call; files in the session directory stay until ``close``). A call past its
wall-clock timeout kills the whole process group and the next call starts a fresh session (state lost,
and the reply says so). Output is truncated.

``isolation`` picks how much more the child gets (``sandbox_child.py`` has the mechanics, and
``docs/agents.md`` what each mode protects against and what not):

- ``"namespaces"``: new mount, PID, network, IPC and UTS namespaces (and a user namespace when not
  root): no network, the file system read-only except the session directory, no view of or signals to
  host processes, no privileges (its own uid when started as root, no capabilities otherwise), at most
  ``max_processes`` processes (a fork bomb stops there); an error result if the kernel refuses.
- ``"process"``: only the rlimits, process group and working directory above. Not a security
  boundary: the code can read and write what the user can, open sockets, signal the user's processes
  and fork until the wall-clock timeout kills its process group.
- ``"auto"`` (the default): namespaces where the kernel allows them, else ``process``;
  ``sandbox.isolation`` says which one a session got and ``isolation_detail`` why.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import weakref

from intern_jax.agent.tools import Tool, ToolResult, tool

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
ISOLATION_MODES = ("auto", "namespaces", "process")
_namespaces_refused: str | None = None  # why "auto" stopped trying namespaces in this process, once they failed
_fallback_warned = False  # "auto" warns once per process when it gets no namespaces
_open_sessions: weakref.WeakSet = weakref.WeakSet()  # closed at exit: no process, directory or cgroup outlives us


@atexit.register
def _close_open_sessions() -> None:
    for session in list(_open_sessions):
        session.close()


def _remove_cgroup(path: str, wait: float = 2.0) -> None:
    """Remove a session's cgroup once the kernel has let its last process go (best effort)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:  # busy: killed processes are still leaving
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)


class PythonSandbox:
    """One interpreter session; ``run(code) -> ToolResult``; use as a context manager or ``close()``."""

    def __init__(self, timeout: float = 10.0, cpu_seconds: int = 10, memory_mb: int = 512,
                 file_size_mb: int = 16, output_limit: int = 4000, stateful: bool = True,
                 isolation: str = "auto", max_processes: int = 32, total_memory_mb: int | None = None):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATION_MODES)}, got {isolation!r}")
        if max_processes < 1:
            raise ValueError(f"max_processes must be at least 1, got {max_processes}")
        self.timeout, self.cpu_seconds, self.memory_mb, self.stateful = timeout, cpu_seconds, memory_mb, stateful
        self.file_size_mb, self.output_limit = file_size_mb, output_limit
        self.requested_isolation, self.max_processes = isolation, max_processes
        self.total_memory_mb = 2 * memory_mb if total_memory_mb is None else total_memory_mb
        self.isolation: str | None = None  # what the running session got: "namespaces" or "process"
        self.isolation_detail: str | None = None
        self.workdir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.cgroup: str | None = None  # the running session's memory cgroup, removed with it

    def _start(self) -> str | None:
        """Start the child and read its greeting; an error message if it could not be isolated as asked."""
        global _namespaces_refused, _fallback_warned
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="intern_jax_sandbox_")
        _open_sessions.add(self)
        mode = self.requested_isolation
        if mode == "auto" and _namespaces_refused is not None:
            mode = "process"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.workdir, "TMPDIR": self.workdir,
               "PYTHONIOENCODING": "utf-8"}
        args = [str(self.output_limit), str(self.cpu_seconds), str(self.memory_mb << 20),
                str(self.file_size_mb << 20), str(self.max_processes), mode, self.workdir,
                str(self.total_memory_mb << 20)]
        self.proc = subprocess.Popen([sys.executable, "-I", CHILD, *args], cwd=self.workdir, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True, text=True, encoding="utf-8")
        ready, _, _ = select.select([self.proc.stdout], [], [], max(self.timeout, 30.0))
        hello = json.loads(self.proc.stdout.readline() or "null") if ready else None
        self.cgroup = hello.get("cgroup") if isinstance(hello, dict) else None
        if not isinstance(hello, dict) or "error" in hello:
            self._kill()
            reason = hello["error"] if isinstance(hello, dict) else "the interpreter process did not start"
            if mode == "auto" and isinstance(hello, dict):
                _namespaces_refused = reason
                return self._start()
            return reason
        self.isolation = hello["isolation"]
        self.isolation_detail = hello["detail"] + (f" ({_namespaces_refused})" if mode != self.requested_isolation
                                                   else "")
        if self.requested_isolation == "auto" and self.isolation == "process" and not _fallback_warned:
            _fallback_warned = True
            warnings.warn(f"the Python sandbox runs without namespaces: {self.isolation_detail}; docs/agents.md says "
                          "what process-only isolation does not protect against", RuntimeWarning, stacklevel=3)
        return None

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
        if self.cgroup is not None:
            _remove_cgroup(self.cgroup)
            self.cgroup = None

    def run(self, code: str) -> ToolResult:
        """Run ``code`` in the session; stdout, stderr and the exception (as text) come back; never raises."""
        restarted = ""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._kill()
                restarted = "(the previous session ended; variables were lost)\n"
            if (error := self._start()) is not None:
                return ToolResult.fail(error)
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
            killed = "a kill signal" + (f" (the session's {self.total_memory_mb} MB of memory were used up, or it "
                                        "was killed)" if self.cgroup else "")
            self._kill()
            reason = {-signal.SIGXCPU: f"the {self.cpu_seconds} s CPU limit", -signal.SIGKILL: killed,
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
        _open_sessions.discard(self)

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
