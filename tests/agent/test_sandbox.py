"""The Python interpreter tool: results, exceptions as text, and the limits (wall time, memory, file size)
stop runaway code with an error result while the host goes on."""

from __future__ import annotations

import os

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
