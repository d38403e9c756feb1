"""Scripts run from a command line keep their compiled XLA programs in a persistent cache: the second run of
``scripts/generate.py`` on the same model reads every program back (it writes nothing new) and prints the
same text; ``INTERN_JAX_COMPILATION_CACHE`` moves or turns off the cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from intern_jax import cli

ROOT = Path(__file__).resolve().parents[2]
HIT, MISS = "Persistent compilation cache hit", "PERSISTENT COMPILATION CACHE MISS"


def _generate(model: Path, env: dict) -> tuple[str, dict, str]:
    done = subprocess.run([sys.executable, str(ROOT / "scripts/generate.py"), "--model", str(model),
                           "--prompt", "The cache keeps", "--max-new-tokens", "6", "--stats"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = next(json.loads(line) for line in reversed(done.stderr.splitlines()) if line.startswith("{"))
    return done.stdout, stats, done.stderr


@pytest.mark.slow
def test_the_second_run_reads_every_program_back_and_prints_the_same_text(tiny_checkpoint, tmp_path):
    cache = tmp_path / "xla"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    # the tiny model compiles in well under jax's 1 s threshold for caching a program: cache every one here
    # (and jax's compiler logs each lookup, hit or miss)
    env.update({cli.CACHE_ENV: str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_DEBUG_LOG_MODULES": "jax._src.compiler"})
    first_text, first, first_log = _generate(tiny_checkpoint, env)
    assert first_log.count(MISS) > 0 and first_log.count(HIT) == 0
    written = sorted(p.name for p in cache.glob("*-cache"))
    assert len(written) == first_log.count(MISS), "every program compiled was cached"
    second_text, second, second_log = _generate(tiny_checkpoint, env)
    assert second_log.count(MISS) == 0 and second_log.count(HIT) == len(written)  # each one read back
    assert sorted(p.name for p in cache.glob("*-cache")) == written
    assert second_text == first_text and second["generated_tokens"] == first["generated_tokens"]


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv(cli.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    assert cli.compilation_cache_dir() == tmp_path / "home-cache" / "intern_jax" / "xla"
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "mine"))
    assert cli.compilation_cache_dir() == tmp_path / "mine"
    for off in ("0", "off", "OFF", "false"):
        monkeypatch.setenv(cli.CACHE_ENV, off)
        assert cli.compilation_cache_dir() is None
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-own"))  # jax's own setting wins
    assert cli.compilation_cache_dir() is None


def test_an_unusable_cache_directory_is_named_and_the_run_goes_on(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(cli.CACHE_ENV, str(blocker / "xla"))
    assert cli.use_compilation_cache() is None
    err = capsys.readouterr().err
    assert "compiled programs are not cached" in err and str(blocker) in err and cli.CACHE_ENV in err
