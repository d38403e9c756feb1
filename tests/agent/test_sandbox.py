"""The Python interpreter tool: results, exceptions as text, and the limits (wall time, memory, file size)
stop runaway code with an error result while the host goes on."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from intern_jax.agent.sandbox import PythonSandbox


@pytest.fixture
def sandbox():
    with PythonSandbox(timeout=5, cpu_seconds=5, memory_mb=256, file_size_mb=1, output_limit=200) as s:
        yield s


def test_arithmetic_and_state_persist_across_calls(sandbox):
    assert sandbox.run("x = 6 * 7\nprint(x)").content == "42"
    assert sandbox.run("print(x + 1)").content == "43"
    assert sandbox.run("y = 1").content == "(no output)"


def test_an_exception_comes_back_as_text(sandbox):
    result = sandbox.run("a = 1\nb = a / 0")
    assert result.status == "error"
    assert "ZeroDivisionError: division by zero" in result.error and "line 2: b = a / 0" in result.error
    assert sandbox.run("print(a)").content == "1"  # the session survives an exception
    assert "SyntaxError" in sandbox.run("def (").error


def test_stdout_and_stderr_are_captured_and_truncated(sandbox):
    result = sandbox.run("import sys, os\nprint('x' * 10_000)\nprint('warn', file=sys.stderr)\nos.write(1, b'raw')")
    assert result.content.startswith("x" * 200) and "more characters cut" in result.content
    assert len(result.content) < 400


def test_an_infinite_loop_is_killed_by_the_timeout_and_the_session_restarts():
    with PythonSandbox(timeout=1, cpu_seconds=30) as sandbox:
        sandbox.run("kept = 1")
        result = sandbox.run("while True:\n    pass")
        assert result.status == "error" and "time limit" in result.error
        after = sandbox.run("print(1 + 1)")
        assert after.content.endswith("2")
        assert "NameError" in sandbox.run("kept").error  # the state went with the killed process


def test_the_cpu_limit_stops_a_busy_loop():
    with PythonSandbox(timeout=20, cpu_seconds=1) as sandbox:
        result = sandbox.run("while True:\n    pass")
        assert result.status == "error" and "CPU limit" in result.error


def test_a_memory_bomb_is_stopped(sandbox):
    result = sandbox.run("big = bytearray(4 * 1024 ** 3)")
    assert result.status == "error" and "MemoryError" in result.error and "256 MB" in result.error
    result = sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))")
    assert result.status == "error" and "MemoryError" in result.error
    assert sandbox.run("del chunks\nprint('alive')").content == "alive"


def test_writing_a_large_file_is_stopped(sandbox):
    result = sandbox.run("with open('big.bin', 'wb') as f:\n    f.write(b'0' * (8 << 20))")
    assert result.status == "error" and "File too large" in result.error
    assert os.path.getsize(os.path.join(sandbox.workdir, "big.bin")) <= 1 << 20


def test_files_stay_in_the_session_directory_and_go_with_it(tmp_path):
    sandbox = PythonSandbox(timeout=5)
    result = sandbox.run("import os\nopen('note.txt', 'w').write('hi')\nprint(os.getcwd())")
    workdir = sandbox.workdir
    assert result.content == os.path.realpath(workdir) or result.content == workdir
    assert open(os.path.join(workdir, "note.txt")).read() == "hi"
    assert not os.path.exists("note.txt")
    pid = sandbox.proc.pid
    sandbox.close()
    assert not os.path.exists(workdir)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_sessions_do_not_share_state():
    with PythonSandbox() as a, PythonSandbox() as b:
        a.run("secret = 1")
        assert "NameError" in b.run("secret").error and a.workdir != b.workdir


def test_the_tool_validates_its_argument(sandbox):
    t = sandbox.as_tool()
    assert t.schema["function"]["name"] == "python_interpreter"
    assert t.call({"code": "print(2 ** 5)"}).content == "32"
    assert "'code'" in t.call({}).error


def test_a_crash_of_the_interpreter_is_an_error_and_the_next_call_starts_afresh(sandbox):
    result = sandbox.run("import ctypes\nctypes.string_at(0)")
    assert result.status == "error" and "segmentation fault" in result.error
    assert sandbox.run("print('back')").content.endswith("back")


def test_a_stateless_session_forgets_variables_but_keeps_its_files():
    with PythonSandbox(stateful=False) as sandbox:
        assert sandbox.run("x = 1\nopen('f.txt', 'w').write('kept')\nprint(x)").content == "1"
        assert "NameError" in sandbox.run("x").error
        assert sandbox.run("print(open('f.txt').read())").content == "kept"


# ------------------------------------------------------------------ isolation in namespaces


def _namespaces_available() -> str | None:
    with PythonSandbox(isolation="namespaces") as probe:
        result = probe.run("pass")
    return None if result.status == "success" else result.error


NAMESPACES_REFUSED = _namespaces_available()
# skipped only where the kernel refuses to create namespaces; a failure after that fails the tests
needs_namespaces = pytest.mark.skipif(NAMESPACES_REFUSED is not None and "unshare:" in NAMESPACES_REFUSED,
                                      reason=f"{NAMESPACES_REFUSED}")


@pytest.fixture
def jail():
    with PythonSandbox(timeout=10, memory_mb=256, isolation="namespaces", max_processes=16) as s:
        yield s


@needs_namespaces
def test_auto_isolation_takes_namespaces_where_the_kernel_allows_them():
    with PythonSandbox() as sandbox:
        assert sandbox.run("pass").status == "success"
        assert sandbox.isolation == "namespaces" and "network" in sandbox.isolation_detail


@needs_namespaces
def test_no_network_reaches_a_real_listening_socket_on_loopback(jail):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('connected')"
        with PythonSandbox(isolation="process") as plain:  # the same code outside the namespace does connect
            assert plain.run(code).content == "connected"
        result = jail.run(code)
        assert result.status == "error" and "Network is unreachable" in result.error
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()[0].close()  # only the plain session's connection was ever made ... and taken here
            server.accept()


@needs_namespaces
def test_writes_outside_the_session_directory_fail_and_the_host_files_are_untouched(jail):
    import tempfile
    from pathlib import Path

    tmp_path = Path(tempfile.mkdtemp(prefix="sandbox-victim-", dir="/tmp"))  # only the mount stands in the way:
    tmp_path.chmod(0o777)  # the directory and the file are writable by anyone
    victim = tmp_path / "project_file.py"
    victim.write_text("precious")
    victim.chmod(0o666)
    for code in (f"open({str(victim)!r}, 'w').write('gone')", f"import os\nos.remove({str(victim)!r})",
                 f"open({str(tmp_path / 'new.txt')!r}, 'w')", "open('/tmp/escaped.txt', 'w')",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})"):
        result = jail.run(code)
        assert result.status == "error" and "Read-only file system" in result.error, code
    assert victim.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["project_file.py"]
    shutil.rmtree(tmp_path)
    assert not os.path.exists("/tmp/escaped.txt")
    assert jail.run("open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())").content == "ok"
    assert open(os.path.join(jail.workdir, "inside.txt")).read() == "ok"


@needs_namespaces
def test_a_fork_bomb_stops_at_the_process_limit_and_leaves_nothing_behind(jail):
    code = ("import os, time\nchildren = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            time.sleep(60)\n        children += 1\nexcept OSError as e:\n    print(children, e.errno)")
    import errno

    children, err = map(int, jail.run(code).content.split())
    # the interpreter counts too, and as a user also the namespace's init and starter (one uid, one namespace)
    assert 16 - 3 <= children <= 16 - 1 and err == errno.EAGAIN
    result = jail.run("while True:\n    os.fork()")  # every process forks: all hit the limit, the bomb ends
    assert result.status == "error" and "BlockingIOError" in result.error
    assert jail.run("print('alive')").content == "alive"
    group = jail.proc.pid
    assert len(_group(group)) >= 16  # the sleepers are still there, the whole session counted once
    jail.close()
    deadline = time.monotonic() + 10
    while _group(group) and time.monotonic() < deadline:  # the kernel tears the namespace down asynchronously
        time.sleep(0.05)
    assert _group(group) == []


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    alive = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(int(entry))
    return alive


@needs_namespaces
def test_host_processes_are_out_of_sight_and_out_of_reach(jail):
    import subprocess

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        result = jail.run(f"import os, signal\nos.kill({sleeper.pid}, signal.SIGKILL)")
        assert result.status == "error" and ("ProcessLookupError" in result.error or "PermissionError" in result.error)
        result = jail.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")  # its own init
        assert result.status == "error" and "PermissionError" in result.error
        listing = jail.run("import os\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()))")
        assert listing.content == "['1', '2']"  # the namespace's init and the interpreter: nothing of the host
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


@needs_namespaces
def test_the_interpreter_holds_no_privileges(jail):
    result = jail.run("import os\nstatus = open('/proc/self/status').read()\n"
                      "print(os.getuid() != 0, status.split('CapEff:')[1].split()[0])")
    assert result.content == "True 0000000000000000"
    assert "Operation not permitted" in jail.run("import os\nos.setuid(0)").error


def test_an_unknown_isolation_mode_is_named():
    with pytest.raises(ValueError, match="isolation must be one of auto, namespaces, process"):
        PythonSandbox(isolation="docker")


def test_memory_hogs_in_forked_processes_share_one_bound_where_a_memory_cgroup_exists():
    code = ("import os, time\nkids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
            "        block = bytearray(150 << 20)\n        block[::4096] = b'1' * len(block[::4096])\n"  # every page
            "        time.sleep(1)\n        os._exit(0)\n    kids.append(pid)\n"
            "print(sorted(os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids))")
    with PythonSandbox(memory_mb=200, total_memory_mb=400, timeout=30) as sandbox:
        assert sandbox.run("pass").status == "success"
        if sandbox.cgroup is None:
            pytest.skip(f"no memory cgroup can be created here ({sandbox.isolation_detail})")
        assert "400 MB (memory cgroup)" in sandbox.isolation_detail
        exits = json.loads(sandbox.run(code).content)  # 4 x 150 MB touched against 400 MB for the session
        assert exits.count(-9) >= 1 and exits.count(0) >= 1, exits  # the kernel killed some, not all
        assert sandbox.run("print('alive')").content == "alive"
        group = sandbox.cgroup
    assert not os.path.exists(group)  # removed with the session


def test_a_session_left_open_is_cleaned_up_when_its_owner_exits():
    import subprocess
    import sys

    script = ("import json\nfrom intern_jax.agent.sandbox import PythonSandbox\ns = PythonSandbox()\n"
              "s.run('x = 1')\nkeep = [s]\n"  # never closed, still referenced at exit
              "print(json.dumps({'workdir': s.workdir, 'pgid': s.proc.pid, 'cgroup': s.cgroup}))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    left = json.loads(proc.stdout)
    assert not os.path.exists(left["workdir"]) and _group(left["pgid"]) == []
    assert left["cgroup"] is None or not os.path.exists(left["cgroup"])


@needs_namespaces
@pytest.mark.skipif(os.geteuid() != 0, reason="not root: every namespaces test above already runs as a user")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare command (util-linux) to start as a user")
def test_started_as_a_user_it_isolates_in_a_user_namespace_without_capabilities():
    """As root the tests above take the root path (a uid of its own); this one starts the sandbox as uid 1000 (in
    a user namespace of util-linux's unshare), so the path an ordinary user takes runs here too."""
    import subprocess
    import sys

    script = (
        "import json, os\nfrom intern_jax.agent.sandbox import PythonSandbox\n"
        "with PythonSandbox(isolation='namespaces', timeout=10) as s:\n"
        "    inside = s.run(\"import os\\nopen('f.txt', 'w').write('ok')\\nstatus = open('/proc/self/status').read()\\n"
        "print(os.getuid(), status.split('CapEff:')[1].split()[0], open('f.txt').read())\")\n"
        "    write = s.run(\"open('/tmp/sandbox-escape.txt', 'w')\")\n"
        "    net = s.run(\"import socket\\nsocket.create_connection(('127.0.0.1', 9), timeout=2)\")\n"
        "    print(json.dumps([os.geteuid(), inside.content, s.isolation_detail, write.error, net.error]))\n")
    proc = subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    euid, inside, detail, write, net = json.loads(proc.stdout)
    assert euid == 1000 and inside == "1000 0000000000000000 ok" and "uid 1000 in a user namespace" in detail
    assert "Read-only file system" in write and not os.path.exists("/tmp/sandbox-escape.txt")
    assert "Network is unreachable" in net


def test_sessions_end_when_their_owner_is_killed_in_the_middle_of_a_call():
    import signal
    import subprocess
    import sys

    script = ("import json, threading, time\nfrom intern_jax.agent.sandbox import PythonSandbox\n"
              "sessions = [PythonSandbox(timeout=300), PythonSandbox(timeout=300, isolation='process')]\n"
              "for s in sessions:\n    s.run('pass')\n"
              "    threading.Thread(target=s.run, args=('import time\\ntime.sleep(300)',), daemon=True).start()\n"
              "print(json.dumps([[s.proc.pid, s.workdir, s.cgroup] for s in sessions]), flush=True)\n"
              "time.sleep(300)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        groups, leftovers = zip(*[(g, rest) for g, *rest in json.loads(owner.stdout.readline())], strict=True)
        time.sleep(0.5)  # both calls are sleeping inside their sessions
        assert all(_group(g) for g in groups)
    finally:
        owner.send_signal(signal.SIGKILL)  # no exit hook runs
        owner.wait()
    deadline = time.monotonic() + 10
    while any(_group(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [_group(g) for g in groups] == [[], []]
    for workdir, cgroup in leftovers:  # what only the owner's close() removes
        shutil.rmtree(workdir, ignore_errors=True)
        if cgroup:
            os.rmdir(cgroup)
