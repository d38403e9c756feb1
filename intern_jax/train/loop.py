"""The training loop shared by pretraining and fine-tuning: resume, step, log, checkpoint, stop.

``run_training(TrainRun(model_cfg, train_cfg, run_dir, data_iterator))`` resumes from the
latest readable checkpoint in ``run_dir`` (params, optimizer state and the iterator's
position) or starts from ``TrainRun.trained.initial`` (default: freshly initialised model params),
runs to ``train_cfg.steps`` and saves every ``checkpoint.save_every`` steps and at the end.
Fine-tuning gives ``TrainedParams`` (the adapters, the frozen base, ``assemble`` and shardings,
exactly as ``make_train_step`` takes them, see step.py, plus ``kind`` for run.json).

``data_iterator`` yields this process's rows of each global batch (batch contract);
for checkpoints it must be a grain iterator (get_state / set_state). ``max_bad_steps``
non-finite steps in a row save the last good state and raise ``TrainingDiverged``. Ctrl-C (SIGINT,
in the main thread) lets the current step finish, saves a checkpoint and raises
``TrainingInterrupted``; a second Ctrl-C stops at once.

``TrainRun.eval_batches`` (``make_eval_batches``: this process's rows of held-out batches, per source)
are evaluated every ``eval.every`` steps and after the last one; the held-out loss goes into
that step's metrics record. Evaluation reads the params only: training is the same with or
without it, and its time is left out of tokens/s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from intern_jax.checkpoint.run import Checkpointer, write_run_json
from intern_jax.cli import output_dir
from intern_jax.config import ModelConfig
from intern_jax.data.config import DataConfig
from intern_jax.data.contract import CONTRACT_KEYS
from intern_jax.model import internlm2
from intern_jax.sharding import make_mesh
from intern_jax.train import metrics as M
from intern_jax.train.config import TrainConfig, check_run_flags, train_config_to_dict, with_run_flags
from intern_jax.train.step import make_batch_sharding, make_train_step, process_row_block, shard_batch
from intern_jax.train.synthetic import SyntheticData, make_synthetic_iterator

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the last good state was checkpointed."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; a checkpoint of the last finished step was saved."""


class _StopOnInterrupt:
    """The first SIGINT asks the loop to stop after the current step; a second one interrupts at once."""

    def __init__(self):
        self.requested, self._previous = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to stop at once)", file=sys.stderr,
              flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


@dataclasses.dataclass(frozen=True)
class TrainedParams:
    """What the optimizer trains and what the step only reads. The default trains the model's own
    params, freshly initialised; fine-tuning gives adapters over a frozen base. ``initial``: the
    trainable tree to start from (None: ``internlm2.init``); ``frozen``: passed to every step, never
    updated or saved; ``assemble``, ``abstract`` and ``shardings`` (of the trainable tree) and
    ``frozen_shardings``: as ``make_train_step`` takes them; ``kind``: run.json's ``trainable``."""

    initial: Any = None
    frozen: Any = None
    assemble: Callable | None = None
    abstract: Any = None
    shardings: Any = None
    frozen_shardings: Any = None
    kind: str = "model"


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """One training run as ``run_training`` takes it: the configs, the run directory, this process's
    ``data_iterator``, the ``mesh`` (None: ``train_cfg.parallel``'s over all devices), what is trained,
    the held-out ``eval_batches`` (``make_eval_batches``), what run.json records beyond the configs
    (``tokenizer_path``, ``run_extra``), and the caller's hooks: ``on_step(step, metrics)`` with host
    metrics after every step (tests, custom logging) and XLA ``compiler_options``."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    run_dir: Path
    data_iterator: Any
    mesh: Any = None
    trained: TrainedParams = TrainedParams()
    eval_batches: dict | None = None
    tokenizer_path: Any = None
    run_extra: dict | None = None
    on_step: Callable[[int, dict], Any] | None = None
    compiler_options: dict | None = None


@dataclasses.dataclass
class TrainResult:
    state: dict
    step: int
    last_metrics: dict
    resumed_from: int | None


def make_data_iterator(train_cfg: TrainConfig, model_cfg: ModelConfig, mesh=None):
    """The iterator for ``train_cfg.data``: synthetic data, or the grain pretraining pipeline.

    Each process loads its block of rows of the global batch (``step.process_row_block`` over
    ``mesh``, default the config's); processes that share rows load the same ones."""
    mesh = mesh if mesh is not None else make_mesh(train_cfg.parallel.mesh_shape())
    index, count = process_row_block(make_batch_sharding(mesh, train_cfg.parallel.rules), train_cfg.batch_size,
                                     train_cfg.seq_len)
    kw = {"process_index": index, "process_count": count}
    if train_cfg.data is None or isinstance(train_cfg.data, SyntheticData):
        return make_synthetic_iterator(
            train_cfg.data or SyntheticData(seed=train_cfg.seed), model_cfg.vocab_size,
            train_cfg.batch_size, train_cfg.seq_len, **kw,
        )
    from intern_jax.data.pipeline import make_pretrain_iterator  # noqa: PLC0415

    return make_pretrain_iterator(train_cfg.data_config, **kw)


def _corpus_eval_batches(train_cfg: TrainConfig, index: int, count: int) -> dict[str, list[dict]]:
    from intern_jax.data.pipeline import make_eval_batches as pipeline_eval_batches  # noqa: PLC0415

    data = train_cfg.data_config
    if not isinstance(data, DataConfig):
        data = DataConfig(path=train_cfg.eval.path, seq_len=train_cfg.seq_len, batch_size=train_cfg.batch_size)
    return pipeline_eval_batches(data, path=train_cfg.eval.path, process_index=index, process_count=count,
                                 max_batches=train_cfg.eval.max_batches)


def make_eval_batches(train_cfg: TrainConfig, mesh=None, load: Callable | None = None) -> dict[str, list[dict]] | None:
    """This process's rows of the held-out batches for ``train_cfg.eval`` (None when it is off).

    ``load(process_index, process_count) -> {source: batches}`` reads them for a block of rows
    (default: the pretraining corpus's held-out documents, or ``eval.path``). Every process gets
    the same number of batches per source (a process with fewer held-out rows is padded with
    empty batches, which add nothing), so the processes stay in step."""
    if not train_cfg.eval.every:
        return None
    mesh = mesh if mesh is not None else make_mesh(train_cfg.parallel.mesh_shape())
    index, count = process_row_block(make_batch_sharding(mesh, train_cfg.parallel.rules), train_cfg.batch_size,
                                     train_cfg.seq_len)
    batches = load(index, count) if load is not None else _corpus_eval_batches(train_cfg, index, count)
    names = sorted(batches)
    counts = np.array([len(batches[name]) for name in names], np.int64)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, len(names)).max(axis=0)
    if not counts.sum():
        raise ValueError("the evaluation set yields no batches; raise data.holdout or check eval.path")
    rows = train_cfg.batch_size // count
    empty = {key: np.zeros((rows, train_cfg.seq_len), np.float32 if key == "loss_mask" else np.int32)
             for key in CONTRACT_KEYS}
    return {name: batches[name] + [empty] * int(n - len(batches[name])) for name, n in zip(names, counts)}


def evaluate(ts, params, frozen, eval_batches: dict, global_shape: tuple[int, int], progress: bool = False) -> dict:
    """Held-out metrics of ``params``: ``eval_loss`` (target-weighted over every source),
    ``eval_ppl``, ``eval_tokens`` and ``eval_loss/SOURCE``."""
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=sum(len(b) for b in eval_batches.values()), desc="eval", unit="batch", leave=False,
                   dynamic_ncols=True)
    record, loss_sum, tokens = {}, 0.0, 0.0
    try:
        for name, batches in eval_batches.items():
            sums = None
            for batch in batches:
                out = ts.evaluate(params, frozen, shard_batch(batch, ts.batch_sharding, global_shape))
                sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
                if bar is not None:
                    bar.update(1)
            if sums is None:
                continue
            ce, n = (float(np.asarray(v)) for v in jax.device_get((sums["loss_sum"], sums["tokens"])))
            record[f"eval_loss/{name}"] = ce / n if n else float("nan")
            loss_sum, tokens = loss_sum + ce, tokens + n
    finally:
        if bar is not None:
            bar.close()
    mean = loss_sum / tokens if tokens else float("nan")
    ppl = math.exp(mean) if mean < 700 else float("inf")
    return {"eval_loss": mean, "eval_ppl": ppl, "eval_tokens": tokens, **record}


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def run_training(run: TrainRun) -> TrainResult:
    """Train to ``run.train_cfg.steps``; see the module docstring."""
    model_cfg, train_cfg, trained = run.model_cfg, run.train_cfg, run.trained
    run = dataclasses.replace(run, run_dir=Path(run.run_dir).absolute(),
                              mesh=run.mesh if run.mesh is not None else make_mesh(train_cfg.parallel.mesh_shape()))
    jit_kw = {"compiler_options": run.compiler_options} if run.compiler_options else {}
    ts = make_train_step(
        model_cfg, train_cfg, run.mesh, assemble=trained.assemble, abstract_trainable=trained.abstract,
        trainable_shardings=trained.shardings, frozen_shardings=trained.frozen_shardings, **jit_kw,
    )
    ckpt = Checkpointer(run.run_dir, train_cfg.checkpoint)
    try:
        restored = ckpt.restore_latest(ts.abstract_state(), run.data_iterator)
        if restored is not None:
            start, state = restored
            log.info("resumed from step %d in %s", start, run.run_dir)
        else:
            start, trainable = 0, trained.initial
            if trainable is None:
                rules = train_cfg.parallel.state_rules()[0]
                init = functools.partial(internlm2.init, model_cfg, mesh=run.mesh, rules=rules)
                trainable = jax.jit(init, **jit_kw)(jax.random.key(train_cfg.seed))
            state = ts.init_state(jax.device_put(trainable, ts.state_shardings["params"]))
        write_run_json(run.run_dir, model_cfg, train_config_to_dict(train_cfg), run.tokenizer_path,
                       trainable=trained.kind, extra=run.run_extra, execution=train_cfg.execution)
        writer = M.MetricsWriter(run.run_dir, tensorboard=train_cfg.logging.tensorboard, resume_step=start,
                                 enabled=jax.process_index() == 0)
        result = _loop(run, ts, ckpt, writer, state, start)
        result.resumed_from = start if restored is not None else None
        return result
    finally:
        ckpt.close()


def _loop(run: TrainRun, ts, ckpt, writer, state, start: int) -> TrainResult:
    """Steps ``start + 1 .. train_cfg.steps`` from ``state``: log, evaluate, checkpoint, stop."""
    model_cfg, train_cfg, frozen, data_iterator = run.model_cfg, run.train_cfg, run.trained.frozen, run.data_iterator
    eval_batches, on_step, primary = run.eval_batches, run.on_step, jax.process_index() == 0
    total, every = train_cfg.steps, train_cfg.checkpoint.save_every
    eval_every = train_cfg.eval.every if eval_batches else 0
    tokens_per_step = train_cfg.batch_size * train_cfg.seq_len
    peak = M.peak_flops_per_device(override=train_cfg.logging.peak_flops)
    n_devices = ts.mesh.devices.size
    bar = _progress(total, start, train_cfg.logging.progress and primary)
    window_start, window_steps, window_data, host = None, 0, 0.0, {}
    window_losses = []  # finite losses since the last logged step: their mean is logged as loss_mean
    step = start
    saved_at = start if start > 0 else None
    profiler = _Profiler(train_cfg.logging, ckpt.run_dir / M.TENSORBOARD_DIR)
    stop = _StopOnInterrupt()
    try:
        stop.__enter__()
        while step < total:
            profiler.before(step + 1)
            t_data = time.perf_counter()
            batch = shard_batch(next(data_iterator), ts.batch_sharding, (train_cfg.batch_size, train_cfg.seq_len))
            t_data = time.perf_counter() - t_data
            with profiler.annotate(step + 1):
                state, metrics = ts.step(state, frozen, batch)
                host = {k: np.asarray(v).item() for k, v in jax.device_get(metrics).items()}
            step += 1
            profiler.after(step, state)
            if math.isfinite(host["loss"]):
                window_losses.append(host["loss"])
            now = time.perf_counter()
            if window_start is None:  # the first step compiles; time from its end
                window_start, window_steps, window_data = now, 0, 0.0
            else:
                window_steps += 1
                window_data += t_data
            if on_step is not None:
                on_step(step, host)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{host['loss']:.4f}", lr=f"{host['lr']:.2e}")
            if host["bad_steps"] >= train_cfg.max_bad_steps:
                ckpt.save(step, state, data_iterator)
                ckpt.wait()
                raise TrainingDiverged(
                    f"{host['bad_steps']} steps in a row had a non-finite loss or gradient (last at step "
                    f"{step}, {host['skipped']} skipped in all); updates were skipped, so the checkpoint "
                    f"saved at step {step} holds the last good params. Lower optimizer.learning_rate, "
                    "check the data, or raise max_bad_steps."
                )
            eval_now = eval_every > 0 and (step % eval_every == 0 or step == total)
            if step % train_cfg.logging.log_every == 0 or step == total or eval_now:
                record = dict(host)
                record.pop("finite", None)
                if window_losses:
                    record["loss_mean"] = sum(window_losses) / len(window_losses)
                    window_losses = []
                if window_steps > 0:
                    dt = (now - window_start) / window_steps
                    record["step_time_s"] = dt
                    record["tokens_per_s"] = tokens_per_step / dt
                    record["mfu"] = M.mfu(tokens_per_step / dt, model_cfg, train_cfg.seq_len, n_devices, peak)
                    record["data_wait_s"] = window_data / window_steps  # of step_time_s: fetching and placing the batch
                    window_start, window_steps, window_data = now, 0, 0.0
                if eval_now:
                    t_eval = time.perf_counter()
                    record.update(evaluate(ts, state["params"], frozen, eval_batches,
                                           (train_cfg.batch_size, train_cfg.seq_len), progress=bar is not None))
                    record["eval_time_s"] = time.perf_counter() - t_eval
                    if window_start is not None:  # the evaluation's time is not training time
                        window_start += record["eval_time_s"]
                writer.write(step, record)
                if bar is None and primary and train_cfg.logging.log_every > 0:
                    print(_log_line(step, total, record), flush=True)
            if every > 0 and step % every == 0:
                ckpt.save(step, state, data_iterator)
                saved_at = step
            if stop.requested:
                break
        if saved_at != step:
            ckpt.save(step, state, data_iterator)
        if stop.requested:
            ckpt.wait()
            raise TrainingInterrupted(f"checkpoint saved at step {step} of {total}; rerun the same command to resume")
    finally:
        stop.__exit__()
        profiler.close()
        if bar is not None:
            bar.close()
        writer.close()
    return TrainResult(state=state, step=step, last_metrics=host, resumed_from=None)


class _Profiler:
    """A JAX profiler trace of steps ``[profile_start, profile_start + profile_steps)`` (1-based)."""

    def __init__(self, cfg, directory: Path):
        self.first, self.last = cfg.profile_start, cfg.profile_start + cfg.profile_steps - 1
        self.enabled = cfg.profile_steps > 0
        self.directory = directory
        self.active = False

    def before(self, step: int) -> None:
        if self.enabled and step == self.first and not self.active:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.active = True
            log.info("profiling steps %d-%d into %s", self.first, self.last, self.directory)

    def annotate(self, step: int):
        if self.active:
            return jax.profiler.StepTraceAnnotation("train", step_num=step)
        return contextlib.nullcontext()

    def after(self, step: int, state) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def _log_line(step: int, total: int, record: dict) -> str:
    parts = [f"step {step}/{total}", f"loss {record['loss']:.4f}"]
    if "loss_mean" in record:
        parts.append(f"(mean since last log {record['loss_mean']:.4f})")
    parts += [f"grad_norm {record['grad_norm']:.3f}",
             f"lr {record['lr']:.3e}"]
    if "tokens_per_s" in record:
        parts.append(f"{record['tokens_per_s']:.0f} tokens/s")
    if record.get("mfu") is not None:
        parts.append(f"MFU {100 * record['mfu']:.1f}%")
    if record.get("skipped"):
        parts.append(f"skipped {record['skipped']}")
    if "eval_loss" in record:
        parts.append(f"held-out loss {record['eval_loss']:.4f} (ppl {record['eval_ppl']:.2f})")
    return "  ".join(parts)


def run_from_cli(prog: str, args, load: Callable, train: Callable) -> tuple[int, Path | None]:
    """The training scripts' shared body: ``load(args.config, args.overrides)``, apply ``--steps``,
    ``--save-every`` and ``--quiet``, ``train(cfg, output)``, print the last loss.

    Returns ``(exit code, run directory)``: 0 on success, 3 when the run stopped on non-finite steps.
    A bad config or input raises (``intern_jax.cli.entry`` turns it into one line and exit status 2),
    and so does Ctrl-C (``TrainingInterrupted``, exit status 130, after a checkpoint is saved).
    """
    check_run_flags(steps=args.steps, save_every=args.save_every)  # before a config can start building a corpus
    if args.output:
        output_dir(args.output)
    cfg = load(args.config, args.overrides)
    cfg = with_run_flags(cfg, steps=args.steps, save_every=args.save_every, quiet=args.quiet)
    settings = getattr(cfg, "train", cfg)  # a FinetuneConfig holds its training run's settings in ``train``
    output = output_dir(args.output or Path("runs") / (settings.name or Path(args.config).stem))
    try:
        result = train(cfg, output)
    except TrainingDiverged as e:
        print(f"{prog}: stopped: {e}", file=sys.stderr)
        return 3, None
    m = result.last_metrics
    if m:
        print(f"step {result.step}: loss {m['loss']:.4f}; run directory {output}")
    elif result.resumed_from is not None and result.resumed_from >= settings.steps:
        print(f"{output} is already at step {result.resumed_from} (steps: {settings.steps}); nothing to train. Raise "
              "--steps to continue it", file=sys.stderr)
    return 0, output
