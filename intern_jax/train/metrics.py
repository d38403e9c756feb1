"""Training metrics: FLOPs per token, MFU, and the writers (metrics.jsonl, TensorBoard).

FLOPs per trained token (forward + backward, the PaLM convention, remat not counted)::

    6 * N_matmul + 12 * L * H * D * T

``N_matmul`` = weights that take part in matmuls (wqkv, wo, w1, w2, w3 of every layer and
the output head, tied or not; the embedding lookup is a gather and costs nothing);
``12 L H D T`` is attention's q.k and p.v matmuls over the full ``T x T`` score matrix,
which is what the XLA attention path computes (causal skipping is not subtracted).
MFU = achieved FLOP/s / (peak FLOP/s per device x devices). This module does not time steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

from intern_jax.config import ModelConfig

# Dense bf16 peak FLOP/s per device (vendor data sheets), matched against jax's device_kind.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
}

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def matmul_params(cfg: ModelConfig) -> int:
    """Number of weights used in matmuls per token (see the module docstring)."""
    e, d, m = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    qkv = e * (cfg.num_heads + 2 * cfg.num_kv_heads) * d
    per_layer = qkv + cfg.num_heads * d * e + 3 * e * m
    return cfg.num_layers * per_layer + e * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: ``6 * N_matmul + 12 * L * H * D * seq_len``."""
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6.0 * matmul_params(cfg) + attention


def peak_flops_per_device(device=None, override: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: ``override`` if > 0, else the table; None when unknown (CPU)."""
    if override > 0:
        return override
    kind = (device or jax.devices()[0]).device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def mfu(tokens_per_s: float, cfg: ModelConfig, seq_len: int, num_devices: int, peak: float | None):
    """Model FLOPs utilisation in [0, 1], or None without a known peak."""
    if not peak:
        return None
    return tokens_per_s * flops_per_token(cfg, seq_len) / (peak * num_devices)


class MetricsWriter:
    """Appends one JSON object per logged step to ``run_dir/metrics.jsonl`` and, optionally,
    scalars to TensorBoard event files under ``run_dir/tensorboard``.

    ``resume_step``: on a restart, lines for steps after the restored checkpoint are dropped,
    so the file reads as one uninterrupted run. Only the primary process writes.
    """

    def __init__(self, run_dir, *, tensorboard: bool = True, resume_step: int | None = None, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
                if resume_step is not None and record.get("step", 0) <= resume_step:
                    keep.append(line)
            self.path.write_text("".join(f"{line}\n" for line in keep))
        self._file = open(self.path, "a")  # noqa: SIM115  (held for the run)
        if tensorboard:
            from tensorboardX import SummaryWriter  # noqa: PLC0415

            self._tb = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR))

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        for key, value in values.items():
            if value is None:
                continue
            value = float(value)
            record[key] = value if math.isfinite(value) else str(value)
            if self._tb is not None and math.isfinite(value):
                tag = f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"
                self._tb.add_scalar(tag, value, int(step))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (unreadable lines skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a training run directory?")
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_metrics(run_dir, output_dir=None) -> list[Path]:
    """Draw ``loss.png`` (loss, held-out loss when evaluated, and learning rate on a second axis) and ``throughput.png``
    (tokens/s, and MFU when known) from a run's metrics.jsonl; returns the files written."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    records = [r for r in read_metrics(run_dir) if isinstance(r.get("loss"), float)]
    if not records:
        raise ValueError(f"{Path(run_dir) / METRICS_FILE} holds no logged losses yet")
    out = Path(output_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in records]
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    if any("loss_mean" in r for r in records):
        ax.plot(steps, [r["loss"] for r in records], color="tab:blue", alpha=0.3, label="loss at the logged step")
        ax.plot(steps, [r.get("loss_mean", r["loss"]) for r in records], color="tab:blue",
                label="mean loss since the previous log")
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.plot(steps, [r["loss"] for r in records], color="tab:blue", label="loss")
    evaluated = [r for r in records if isinstance(r.get("eval_loss"), float)]
    if evaluated:
        ax.plot([r["step"] for r in evaluated], [r["eval_loss"] for r in evaluated], color="tab:red",
                marker="o", label="held-out loss")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if any("lr" in r for r in records):
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [r.get("lr", float("nan")) for r in records], color="tab:orange", alpha=0.6)
        lr_ax.set_ylabel("learning rate", color="tab:orange")
    ax.set_title(f"training loss: {Path(run_dir).name}")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)
    written.append(out / "loss.png")

    timed = [r for r in records if "tokens_per_s" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in timed], [r["tokens_per_s"] for r in timed], color="tab:green")
    ax.set_xlabel("step")
    ax.set_ylabel("tokens / s")
    if any(isinstance(r.get("mfu"), float) for r in timed):
        mfu_ax = ax.twinx()
        mfu_ax.plot([r["step"] for r in timed], [100 * r.get("mfu", float("nan")) for r in timed],
                    color="tab:red", alpha=0.6)
        mfu_ax.set_ylabel("MFU %", color="tab:red")
    ax.set_title(f"throughput: {Path(run_dir).name}")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)
    plt.close(fig)
    written.append(out / "throughput.png")
    return written
