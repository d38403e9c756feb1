"""FLOPs/MFU formula against XLA's count, metrics files, the memory plan, config errors, SLURM parsing."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from intern_jax.config import ConfigError
from intern_jax.model import internlm2
from intern_jax.sharding import make_mesh
from intern_jax.testing import tiny_config
from intern_jax.train import metrics as M
from intern_jax.train.config import ParallelConfig, TrainConfig, load_train_config
from intern_jax.train.distributed import first_slurm_host, spec_from_slurm
from intern_jax.train.plan import plan_memory
from intern_jax.train.step import make_train_step

ROOT = Path(__file__).resolve().parents[2]
FAST = {"xla_backend_optimization_level": 0}


@pytest.mark.parametrize("batch,seq_len", [(2, 128), (1, 512)])
def test_flops_formula_matches_compiled_train_step_count(batch, seq_len):
    """XLA's cost analysis of the whole compiled step (one layer: a scan body is counted once)
    agrees with 6N + 12 L H D T per token; at T=512 attention is ~27% of it, so a wrong
    attention term would fail."""
    cfg = tiny_config(vocab_size=512, hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512,
                      num_layers=1, max_position_embeddings=512)
    tc = TrainConfig(model=cfg, batch_size=batch, seq_len=seq_len, parallel=ParallelConfig(fsdp=1))
    ts = make_train_step(cfg, tc, make_mesh({"fsdp": 1}, jax.devices()[:1]), compiler_options=FAST)
    cost = ts.step.lower(ts.abstract_state(), None, ts.abstract_batch(batch, seq_len)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    formula = M.flops_per_token(cfg, seq_len) * batch * seq_len
    assert abs(cost["flops"] / formula - 1) < 0.06, (cost["flops"], formula)


def test_matmul_params_are_the_model_weights_minus_embeddings_and_norms():
    cfg = tiny_config(vocab_size=96)
    specs = jax.tree_util.tree_flatten_with_path(internlm2.abstract(cfg))[0]
    counted = sum(math.prod(a.shape) for path, a in specs
                  if not any(s in jax.tree_util.keystr(path) for s in ("norm", "tok_embeddings")))
    assert M.matmul_params(cfg) == counted


def test_mfu_and_peak_flops_lookup():
    cfg = tiny_config()
    assert M.peak_flops_per_device(override=123.0) == 123.0
    assert M.mfu(1000.0, cfg, 64, 4, peak=None) is None
    assert math.isclose(M.mfu(1000.0, cfg, 64, 4, peak=1e9), 1000.0 * M.flops_per_token(cfg, 64) / 4e9)
    assert M.peak_flops_per_device(jax.devices()[0]) is None  # CPU: unknown unless given


def test_metrics_writer_drops_records_after_the_resumed_step(tmp_path):
    w = M.MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 6):
        w.write(step, {"loss": 1.0 / step, "grad_norm": float("nan")})
    w.close()
    with open(tmp_path / M.METRICS_FILE, "a") as f:
        f.write('{"step": 6, "lo')  # a line cut short by a kill
    w = M.MetricsWriter(tmp_path, tensorboard=False, resume_step=3)
    w.write(4, {"loss": 0.5})
    w.close()
    records = M.read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["loss"] == 0.5
    assert records[0]["grad_norm"] == "nan"


def test_plan_reports_sharded_state_bytes_and_compiled_memory():
    cfg = tiny_config(vocab_size=128)
    tc = TrainConfig(model=cfg, batch_size=8, seq_len=32, parallel=ParallelConfig(fsdp=4, tensor=2))
    plan = plan_memory(tc, make_mesh({"fsdp": 4, "tensor": 2}), compiler_options=FAST)
    shardings = internlm2.param_shardings(cfg, make_mesh({"fsdp": 4, "tensor": 2}))
    want = sum(math.prod(s.shard_shape(a.shape)) * 4 for a, s in
               zip(jax.tree.leaves(internlm2.abstract(cfg)), jax.tree.leaves(shardings)))
    assert plan.params_bytes == want < internlm2.count_params(cfg) * 4 / 4
    assert 2 * want <= plan.opt_state_bytes <= 2 * want + 16  # Adam mu and nu, plus step counts
    assert plan.argument_bytes >= plan.params_bytes + plan.opt_state_bytes
    assert plan.temp_bytes > 0 and plan.peak_bytes > plan.argument_bytes
    assert "peak / device" in plan.table(80)


def test_plan_script_compiles_for_fake_devices_it_requests(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts/plan.py"), "--config", str(ROOT / "configs/pretrain/tiny.py"),
         "--devices", "4", "--mesh", "fsdp=2,tensor=2", "--set", "model.vocab_size=256", "--set", "seq_len=64"],
        capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fsdp=2 x sequence=1 x tensor=2" in out.stdout and "peak / device" in out.stdout


def test_unknown_and_invalid_config_keys_fail_with_the_valid_names():
    with pytest.raises(ConfigError, match="valid fields: .*learning_rate"):
        load_train_config(ROOT / "configs/pretrain/tiny.py", ["optimizer.lr=1e-3"])
    with pytest.raises(ConfigError, match="valid fields: .*checkpoint.*optimizer.*parallel"):
        load_train_config(ROOT / "configs/pretrain/tiny.py", ["optimiser.learning_rate=1e-3"])
    with pytest.raises(ConfigError, match="zero"):
        load_train_config(ROOT / "configs/pretrain/tiny.py", ["parallel.zero=stage3"])
    with pytest.raises(ConfigError, match="micro_batches"):
        load_train_config(ROOT / "configs/pretrain/tiny.py", ["parallel.micro_batches=3"])
    with pytest.raises(ConfigError, match="expects an integer"):
        load_train_config(ROOT / "configs/pretrain/tiny.py", ["steps=many"])
    cfg = load_train_config(ROOT / "configs/pretrain/internlm2_7b.py", ["model.num_layers=2", "seq_len=128"])
    assert cfg.model.num_layers == 2 and cfg.data_config.seq_len == 128
    assert (cfg.optimizer.b1, cfg.optimizer.b2, cfg.optimizer.eps) == (0.9, 0.95, 1e-8)
    assert (cfg.optimizer.weight_decay, cfg.optimizer.grad_clip) == (0.01, 1.0)


def test_pretrain_script_reports_a_bad_key_and_exits_2(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts/pretrain.py"), "--config", str(ROOT / "configs/pretrain/tiny.py"),
         "--set", "optimizer.lr=1", "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 2 and "valid fields" in out.stderr and "learning_rate" in out.stderr
    assert not (tmp_path / "run").exists()


def test_slurm_environment_gives_the_process_group():
    assert first_slurm_host("gpu[003-005,9],cpu1") == "gpu003"
    assert first_slurm_host("node7,node8") == "node7"
    env = {"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_JOB_NODELIST": "a100-[12-15]"}
    spec = spec_from_slurm(env, port=9999)
    assert (spec.coordinator, spec.num_processes, spec.process_id) == ("a100-12:9999", 4, 2)
    assert spec_from_slurm({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert json.dumps(spec.__dict__)  # plain data
    assert np.isscalar(spec.process_id)


def test_plot_metrics_draws_loss_and_throughput_pngs(tmp_path):
    import matplotlib.image

    w = M.MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 11):
        w.write(step, {"loss": 5.0 / step, "lr": 1e-3, "tokens_per_s": 100.0 + step, "mfu": 0.1})
    w.close()
    files = M.plot_metrics(tmp_path, tmp_path / "plots")
    assert [f.name for f in files] == ["loss.png", "throughput.png"]
    for f in files:
        image = matplotlib.image.imread(f)
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        M.plot_metrics(tmp_path / "nothing")
