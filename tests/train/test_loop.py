"""Training loop: learning on real text, checkpoints (mesh changes, damage, divergence), run directories."""

import dataclasses
import json
import sysconfig
from pathlib import Path

import grain
import jax
import numpy as np
import pytest

from intern_jax.checkpoint import convert_checkpoint, detect_format, load_model
from intern_jax.checkpoint.run import DAMAGED_DIR, Checkpointer
from intern_jax.config import ConfigError
from intern_jax.data.pipeline import DataConfig, make_pretrain_iterator, write_token_corpus
from intern_jax.model import internlm2
from intern_jax.sharding import make_mesh
from intern_jax.testing import random_params, reference_lm_loss_sums, tiny_config
from intern_jax.train.config import (
    CheckpointConfig,
    EvalConfig,
    LoggingConfig,
    OptimizerConfig,
    ParallelConfig,
    TrainConfig,
)
from intern_jax.train.loop import (
    TrainedParams,
    TrainingDiverged,
    TrainRun,
    make_data_iterator,
    make_eval_batches,
    run_training,
)
from intern_jax.train.metrics import read_metrics
from intern_jax.train.synthetic import SyntheticData, synthetic_batch

FAST = {"xla_backend_optimization_level": 0}
BYTE_VOCAB = 260  # 0 unused, 1 BOS, 2 EOS, 3 + byte


def byte_corpus(directory: Path, max_files: int = 40) -> Path:
    """Real text: standard-library modules as UTF-8 bytes (BOS + bytes + EOS), in the pipeline's format."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:max_files]
    docs = [np.concatenate([[1], np.frombuffer(f.read_bytes(), np.uint8).astype(np.int32) + 3, [2]]) for f in files]
    write_token_corpus(directory, {"code": docs}, shards=2, vocab_size=BYTE_VOCAB)
    return directory


def _cfg(data=None, *, steps, data_seed=None, save_every=0, lr=3e-3, keep_last=3, **kw):
    """A tiny run's config; without ``data``, synthetic batches from ``data_seed`` (the test's seed)."""
    assert data is not None or data_seed is not None, "synthetic data takes the test's seed"
    model = tiny_config(vocab_size=BYTE_VOCAB if isinstance(data, DataConfig) else 128)
    return TrainConfig(
        model=model, data=data or SyntheticData(seed=data_seed),
        steps=steps, batch_size=8, seq_len=64,
        optimizer=OptimizerConfig(learning_rate=lr, warmup_steps=5, decay_steps=100),  # schedule independent of steps
        parallel=ParallelConfig(fsdp=-1),
        checkpoint=CheckpointConfig(save_every=save_every, keep_last=keep_last, async_save=True),
        logging=LoggingConfig(log_every=1, progress=False, tensorboard=False), **kw,
    )


def _train(cfg, run_dir, mesh=None, iterator=None, init=False, **kw):
    """Train in-process; random weights from numpy unless ``init`` (the loop's own initialiser)."""
    losses = {}
    trained = TrainedParams() if init else TrainedParams(initial=random_params(cfg.model, seed=cfg.seed))
    result = run_training(TrainRun(
        cfg.model, cfg, run_dir, iterator or make_data_iterator(cfg, cfg.model),
        mesh=mesh if mesh is not None else make_mesh({"fsdp": 1}, jax.devices()[:1]), trained=trained,
        on_step=lambda step, m: losses.__setitem__(step, m["loss"]), compiler_options=FAST, **kw,
    ))
    return result, losses


def test_loss_falls_on_real_text_and_run_directory_is_complete(tmp_path):
    corpus = byte_corpus(tmp_path / "corpus")
    cfg = dataclasses.replace(_cfg(DataConfig(path=str(corpus), seed=3), steps=40, save_every=20),
                              logging=LoggingConfig(log_every=5, progress=False, tensorboard=True))
    result, losses = _train(cfg, tmp_path / "run", mesh=make_mesh({"fsdp": 4, "tensor": 2}), init=True)
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(36, 41)])
    assert first > np.log(BYTE_VOCAB) - 0.5, f"an untrained model should be near uniform, got {first}"
    assert last < first - 1.5, f"loss did not fall: {first:.3f} -> {last:.3f}"
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    assert all({"loss", "grad_norm", "lr", "tokens"} <= set(r) for r in records)
    assert "tokens_per_s" in records[-1] and "step_time_s" in records[-1]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["model_config"]["vocab_size"] == BYTE_VOCAB and run["train_config"]["steps"] == 40

    # the run directory is a checkpoint for load_model / convert: latest params, any format
    assert detect_format(tmp_path / "run") == "run"
    loaded = load_model(tmp_path / "run")
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(jax.device_get(result.state["params"]))):
        np.testing.assert_array_equal(a, b)
    convert_checkpoint(tmp_path / "run", tmp_path / "hf", to="llama")
    again = load_model(tmp_path / "hf")
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_restore_onto_other_meshes_continues_the_same_run(tmp_path, seed):
    """8 devices (fsdp x tensor) -> 4 devices -> 1 device gives the losses of one run on 1 device."""
    cfg = _cfg(data_seed=seed, steps=6, save_every=2)
    _, want = _train(cfg, tmp_path / "ref")
    _, got = _train(dataclasses.replace(cfg, steps=2), tmp_path / "run", mesh=make_mesh({"fsdp": 4, "tensor": 2}))
    four = make_mesh({"fsdp": 4}, jax.devices()[:4])
    _, more = _train(dataclasses.replace(cfg, steps=4), tmp_path / "run", mesh=four)
    _, rest = _train(cfg, tmp_path / "run")
    got.update(more)
    got.update(rest)
    assert sorted(got) == list(range(1, 7))
    np.testing.assert_allclose([got[s] for s in range(1, 7)], [want[s] for s in range(1, 7)], atol=1e-5, rtol=0)


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_damaged_latest_checkpoint_falls_back_to_previous_with_warning(tmp_path, seed):
    cfg = _cfg(data_seed=seed, steps=4, save_every=2)
    _, want = _train(cfg, tmp_path / "run")
    victim = _largest_file(tmp_path / "run" / "checkpoints" / "4" / "params")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.warns(UserWarning, match="step 4 .* cannot be restored"):
        result, got = _train(cfg, tmp_path / "run")
    assert result.resumed_from == 2
    assert (tmp_path / "run" / DAMAGED_DIR / "4").is_dir()
    assert got == {3: want[3], 4: want[4]}  # bit-identical continuation from step 2
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_non_finite_steps_in_a_row_stop_with_a_checkpoint_of_the_last_good_state(tmp_path, seed):
    cfg = _cfg(data_seed=seed, steps=20, save_every=2, max_bad_steps=3, keep_last=5)
    data = cfg.data

    def make(i):
        batch = synthetic_batch(data, cfg.model.vocab_size, cfg.batch_size, cfg.seq_len, int(i))
        if i >= 4:  # from step 5 on, every batch poisons the loss
            batch["loss_mask"][0, 0] = np.nan
        return batch

    iterator = iter(grain.MapDataset.range(100).map(make).to_iter_dataset())
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        _train(cfg, tmp_path / "run", iterator=iterator)
    ckpt = Checkpointer(tmp_path / "run", cfg.checkpoint, read_only=True)
    try:
        assert ckpt.all_steps()[-1] == 7
        abstract = jax.eval_shape(lambda: jax.tree.map(np.asarray, _params_template(cfg)))
        good, stopped = ckpt.restore_params(4, abstract), ckpt.restore_params(7, abstract)
    finally:
        ckpt.close()
    for a, b in zip(jax.tree.leaves(stopped), jax.tree.leaves(good)):
        np.testing.assert_array_equal(a, b)


def _params_template(cfg):

    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), internlm2.abstract(cfg.model))


def test_pipeline_iterator_batches_follow_the_train_config(tmp_path):
    """A data config that leaves batch_size and seq_len unset reads the run's (also after an override);
    one that sets another value is refused, naming both settings, instead of being rewritten."""
    corpus = byte_corpus(tmp_path / "corpus", max_files=5)
    cfg = dataclasses.replace(_cfg(DataConfig(path=str(corpus)), steps=1), seq_len=32)
    assert (cfg.data_config.seq_len, cfg.data_config.batch_size) == (32, 8)
    batch = next(make_pretrain_iterator(cfg.data_config, process_index=0, process_count=1))
    assert batch["tokens"].shape == (8, 32)
    with pytest.raises(ConfigError, match="data.seq_len=999 disagrees with seq_len=64"):
        _cfg(DataConfig(path=str(corpus), seq_len=999), steps=1)
    with pytest.raises(ConfigError, match="data.batch_size=2 disagrees with batch_size=8"):
        _cfg(DataConfig(path=str(corpus), batch_size=2), steps=1)
    assert _cfg(DataConfig(path=str(corpus), seq_len=64), steps=1).data_config.seq_len == 64  # agreeing is fine


def test_resuming_with_a_changed_model_is_an_error_and_moves_nothing(tmp_path, seed):
    from intern_jax.checkpoint.run import CheckpointMismatch

    cfg = _cfg(data_seed=seed, steps=2, save_every=2)
    _train(cfg, tmp_path / "run")
    wider = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, intermediate_size=64), steps=4)
    with pytest.raises(CheckpointMismatch, match="another shape.*w1"):
        _train(wider, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir() and not (tmp_path / "run" / DAMAGED_DIR).exists()


def test_held_out_evaluation_matches_a_reference_and_leaves_training_unchanged(tmp_path):
    corpus = byte_corpus(tmp_path / "corpus")
    data = DataConfig(path=str(corpus), seed=5, holdout=0.1)
    plain = dataclasses.replace(_cfg(data, steps=10, save_every=5),
                                parallel=ParallelConfig(fsdp=4, tensor=2, micro_batches=2))
    evaluated = dataclasses.replace(plain, eval=EvalConfig(every=4, max_batches=3))
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    _, losses_plain = _train(plain, tmp_path / "plain", mesh=mesh)
    result, losses_eval = _train(evaluated, tmp_path / "eval", mesh=mesh, eval_batches=make_eval_batches(evaluated))
    assert losses_eval == losses_plain  # evaluation reads params only: the same run, bit for bit

    records = {r["step"]: r for r in read_metrics(tmp_path / "eval")}
    assert [s for s, r in sorted(records.items()) if "eval_loss" in r] == [4, 8, 10]  # every 4, and the last
    assert not any("eval_loss" in r for r in read_metrics(tmp_path / "plain"))
    last = records[10]
    batches = make_eval_batches(evaluated)["code"]
    assert len(batches) == 3
    ce, count = reference_lm_loss_sums(jax.device_get(result.state["params"]), evaluated.model, batches)
    assert last["eval_tokens"] == count == sum(float(b["loss_mask"].sum()) for b in batches)
    np.testing.assert_allclose(last["eval_loss"], ce / count, rtol=1e-5)
    np.testing.assert_allclose(last["eval_loss/code"], last["eval_loss"], rtol=1e-12)
    np.testing.assert_allclose(last["eval_ppl"], np.exp(ce / count), rtol=1e-5)
    assert records[4]["eval_loss"] > last["eval_loss"]  # the held-out loss falls as the model learns


def test_evaluation_without_held_out_documents_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="set data.holdout .* or eval.path"):
        _cfg(DataConfig(path=str(tmp_path)), steps=1, eval=EvalConfig(every=5))
    with pytest.raises(ConfigError, match=r"data.holdout must be a fraction in \[0, 0.5\]"):
        DataConfig(holdout=0.7)
    with pytest.raises(ConfigError, match="eval.every must be an integer >= 0"):
        EvalConfig(every=-1)


def test_profiler_traces_the_chosen_steps_and_data_wait_is_logged(tmp_path, seed):
    import gzip

    logging = LoggingConfig(log_every=3, progress=False, tensorboard=False, profile_start=3, profile_steps=2)
    cfg = dataclasses.replace(_cfg(data_seed=seed, steps=6), logging=logging)
    _train(cfg, tmp_path / "run")
    traces = list((tmp_path / "run" / "tensorboard" / "plugins" / "profile").glob("*/*.trace.json.gz"))
    assert len(traces) == 1
    events = json.loads(gzip.open(traces[0]).read())["traceEvents"]
    assert sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train") == [3, 4]
    records = read_metrics(tmp_path / "run")
    timed = [r for r in records if "step_time_s" in r]
    assert timed and all(0 < r["data_wait_s"] < r["step_time_s"] for r in timed)
    with pytest.raises(ConfigError, match="logging.profile_start must be >= 1"):
        LoggingConfig(profile_start=0, profile_steps=2)
