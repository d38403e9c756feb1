"""A synthetic, learnable, checkpointable data source in the batch contract (benchmarks, tests, plans).

Each document is an arithmetic sequence ``start, start + stride, ...`` (mod vocab) with a
random start, stride and length, packed into rows; the next token is predictable from the
previous two, so a model's loss falls. Batches are a pure function of (seed, batch index,
process), served through a grain dataset so iterator state is saved like a real pipeline's.
Real corpora go through ``intern_jax.data.pipeline``; this is not a substitute for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from intern_jax.config import ConfigError


@dataclass(frozen=True)
class SyntheticData:
    """``min_doc_len``..``max_doc_len`` tokens per document, strides in 1..``max_stride``."""

    seed: int = 0
    min_doc_len: int = 8
    max_doc_len: int = 64
    max_stride: int = 7
    num_batches: int = 1_000_000

    def __post_init__(self):
        if not 2 <= self.min_doc_len <= self.max_doc_len:
            raise ConfigError("synthetic data needs 2 <= min_doc_len <= max_doc_len")


def synthetic_batch(cfg: SyntheticData, vocab_size: int, batch_size: int, seq_len: int, index: int,
                    process_index: int = 0, process_count: int = 1) -> dict:
    """This process's rows of global batch ``index``: a batch-contract dict of numpy arrays."""
    if batch_size % process_count:
        raise ConfigError(f"batch_size {batch_size} is not divisible by {process_count} processes")
    local = batch_size // process_count
    first_row = process_index * local
    out = {k: np.zeros((local, seq_len), np.int32) for k in ("tokens", "targets", "positions", "segment_ids")}
    out["loss_mask"] = np.zeros((local, seq_len), np.float32)
    for r in range(local):
        rng = np.random.default_rng([cfg.seed, index, first_row + r])
        col, segment = 0, 1
        while col < seq_len:
            length = int(rng.integers(cfg.min_doc_len, cfg.max_doc_len + 1))
            start = int(rng.integers(1, vocab_size))
            stride = int(rng.integers(1, cfg.max_stride + 1))
            doc = (start + stride * np.arange(length + 1)) % (vocab_size - 1) + 1  # ids 1..V-1
            n = min(length, seq_len - col)
            out["tokens"][r, col:col + n] = doc[:n]
            out["targets"][r, col:col + n - 1] = doc[1:n]
            out["positions"][r, col:col + n] = np.arange(n)
            out["segment_ids"][r, col:col + n] = segment
            out["loss_mask"][r, col:col + n - 1] = 1.0
            col, segment = col + n, segment + 1
    return out


def make_synthetic_iterator(cfg: SyntheticData, vocab_size: int, batch_size: int, seq_len: int, *,
                            process_index: int = 0, process_count: int = 1):
    """A grain iterator (get_state / set_state) over this process's rows of each batch."""
    import grain  # noqa: PLC0415

    def make(index):
        return synthetic_batch(cfg, vocab_size, batch_size, seq_len, int(index), process_index, process_count)

    return iter(grain.MapDataset.range(cfg.num_batches).map(make).to_iter_dataset())
