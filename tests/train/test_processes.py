"""scripts/pretrain.py in real processes: exact resume after SIGKILL, two processes training together."""

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from intern_jax.data.pipeline import write_token_corpus
from intern_jax.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pretrain.py"


def _env(devices: int) -> dict:
    env = dict(os.environ)
    # optimisation level 0: quicker compiles of these small programs (same numbers in every run here)
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    return env


def _byte_corpus(directory: Path) -> Path:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:20]
    docs = [np.concatenate([[1], np.frombuffer(f.read_bytes(), np.uint8).astype(np.int32) + 3, [2]]) for f in files]
    write_token_corpus(directory, {"code": docs}, shards=2, vocab_size=260)
    return directory


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def _grad_norms(run_dir) -> dict[int, float]:
    return {r["step"]: r["grad_norm"] for r in read_metrics(run_dir) if "grad_norm" in r}


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_rerun_gives_bit_identical_losses(tmp_path, seed):
    corpus = _byte_corpus(tmp_path / "corpus")
    args = [sys.executable, str(SCRIPT), "--config", str(ROOT / "configs/pretrain/tiny.py"), "--quiet",
            "--steps", "12", "--save-every", "3",
            "--set", f"data.path={corpus}", "--set", f"data.seed={seed}", "--set", "model.vocab_size=260",
            "--set", "tokenizer=", "--set", "seq_len=64", "--set", "logging.log_every=1",
            "--set", "logging.tensorboard=false", "--set", "optimizer.warmup_steps=3"]
    ref = subprocess.run([*args, "--output", str(tmp_path / "ref")], env=_env(2), capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    kill_at = int(np.random.default_rng(seed).integers(4, 10))
    run = tmp_path / "run"
    proc = subprocess.Popen([*args, "--output", str(run)], env=_env(2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and max(_losses(run), default=0) >= kill_at:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {kill_at}: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(_losses(run)) < 12

    again = subprocess.run([*args, "--output", str(run)], env=_env(2), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    want, got = _losses(tmp_path / "ref"), _losses(run)
    assert sorted(got) == list(range(1, 13))
    assert got == want, f"killed at step {kill_at} (seed {seed}): losses differ from the uninterrupted run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_together_and_match_one_process(tmp_path):
    """2 processes x 2 CPU devices (gloo collectives) give the losses and gradient norms of 1 process x 4
    devices, with the batch split over the processes and with the sequence split over them. (The norms
    show a sum over processes where a mean belongs; clipping and Adam hide it from the losses.)"""
    # held-out evaluation every 2 steps on a corpus of 13 documents: the processes split it unevenly,
    # so one of them pads with empty batches
    rng = np.random.default_rng(3)
    eval_docs = [rng.integers(1, 128, int(n)).astype(np.int32) for n in rng.integers(5, 90, 13)]
    write_token_corpus(tmp_path / "eval_corpus", {"text": eval_docs}, shards=2, vocab_size=128)
    config = tmp_path / "synthetic.py"
    config.write_text(
        "from intern_jax.testing import tiny_config\n"
        "from intern_jax.train.config import EvalConfig, LoggingConfig, OptimizerConfig, TrainConfig\n"
        "from intern_jax.train.synthetic import SyntheticData\n"
        "config = TrainConfig(model=tiny_config(vocab_size=128), data=SyntheticData(seed=7), steps=4,\n"
        "    batch_size=8, seq_len=32, optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1),\n"
        "    logging=LoggingConfig(log_every=1, tensorboard=False, progress=False),\n"
        f"    eval=EvalConfig(every=2, max_batches=0, path={str(tmp_path / 'eval_corpus')!r}))\n"
    )
    base = [sys.executable, str(SCRIPT), "--config", str(config), "--quiet"]
    single = subprocess.run([*base, "--output", str(tmp_path / "one")], env=_env(4), capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    one = _losses(tmp_path / "one")
    # fsdp over both processes (each loads half the rows); then sequence x tensor, where the
    # sequence axis spans the processes: both load the same rows and each keeps half the positions
    meshes = {"two": [], "two_sp": ["--set", "parallel.fsdp=1", "--set", "parallel.sequence=2",
                                    "--set", "parallel.tensor=2"]}
    for name, mesh in meshes.items():
        port = _free_port()
        procs = [
            subprocess.Popen([*base, *mesh, "--output", str(tmp_path / name), "--coordinator", f"127.0.0.1:{port}",
                              "--num-processes", "2", "--process-id", str(i)],
                             env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)
        ]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, f"{name}: {err[-3000:]}"
        finals = [out.strip().splitlines()[-1] for out, _ in outs]
        assert finals[0] == finals[1], finals  # both processes see the same global loss
        two = _losses(tmp_path / name)
        assert sorted(two) == [1, 2, 3, 4]
        np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], atol=1e-5, rtol=0,
                                   err_msg=name)
        norms_one, norms_two = _grad_norms(tmp_path / "one"), _grad_norms(tmp_path / name)
        assert sorted(norms_two) == sorted(norms_one) == [1, 2, 3, 4]
        np.testing.assert_allclose([norms_two[s] for s in range(1, 5)], [norms_one[s] for s in range(1, 5)],
                                   rtol=1e-5, err_msg=f"{name}: grad_norm")
        held_out = {name: {r["step"]: (r["eval_loss"], r["eval_tokens"]) for r in read_metrics(tmp_path / name)
                           if "eval_loss" in r} for name in ("one", name)}
        assert sorted(held_out[name]) == sorted(held_out["one"]) == [2, 4]
        for step in (2, 4):
            (loss_two, tokens_two), (loss_one, tokens_one) = held_out[name][step], held_out["one"][step]
            # every target once: documents are cut into 32-token chunks, each without its last target
            assert tokens_two == tokens_one == sum(len(d) - -(-len(d) // 32) for d in eval_docs)
            np.testing.assert_allclose(loss_two, loss_one, atol=1e-5, rtol=0, err_msg=name)
        run = json.loads((tmp_path / name / "run.json").read_text())
        assert run["train_config"]["batch_size"] == 8
        assert (tmp_path / name / "checkpoints" / "4").is_dir()
    assert run["train_config"]["parallel"]["sequence"] == 2
