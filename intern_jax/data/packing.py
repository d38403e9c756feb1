"""Pack variable-length examples into fixed-length rows that hold the training batch contract.

``pack_examples`` turns a grain ``IterDataset`` of ``{"tokens", "token_loss"}`` examples into
batches of ``tokens/targets/positions/segment_ids/loss_mask`` (first-fit packing, grain's
``FirstFitPackIterDataset``); pretraining documents and SFT conversations both go through it.
It does not read files, shuffle examples or split documents: callers do that upstream.
"""

from __future__ import annotations

import dataclasses
import threading

import grain
import numpy as np
from grain.experimental import FirstFitPackIterDataset

OVERLONG_POLICIES = ("truncate", "drop")


@dataclasses.dataclass
class PackingStats:
    """Counts of what went into the packer (only meaningful for in-process pipelines).

    With ``num_workers > 0`` each worker process updates its own copy, so the caller's
    object stays at zero; restoring an iterator state does not restore these counts.
    """

    examples: int = 0
    tokens: int = 0
    empty_examples: int = 0
    truncated_examples: int = 0
    truncated_tokens: int = 0
    dropped_examples: int = 0
    dropped_tokens: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable for worker processes (the lock is not)
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class _FitToLength(grain.transforms.Map):
    """Validate one example; truncate or drop it when it is longer than ``seq_len``.

    Returns ``None`` for examples that are dropped (overlong with ``drop``, or empty);
    a ``filter`` after this map removes them.
    """

    def __init__(self, seq_len: int, overlong: str, stats: PackingStats | None):
        self.seq_len = seq_len
        self.overlong = overlong
        self.stats = stats

    def map(self, example):
        if not isinstance(example, dict) or "tokens" not in example:
            raise ValueError(
                "pack_examples expects dict examples with 'tokens' (int32 [n]) and 'token_loss' "
                f"(float32 [n]); got {type(example).__name__}"
                + (f" with keys {sorted(example)}" if isinstance(example, dict) else "")
            )
        tokens = np.asarray(example["tokens"])
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"example 'tokens' must be a 1-D integer array; got {tokens.dtype}{list(tokens.shape)}")
        if "token_loss" in example:
            loss = np.asarray(example["token_loss"], np.float32)
            if loss.shape != tokens.shape:
                raise ValueError(
                    f"example 'token_loss' has shape {list(loss.shape)} but 'tokens' has {list(tokens.shape)}; "
                    "give one loss weight per token"
                )
        else:
            loss = np.ones(tokens.shape, np.float32)
        n = tokens.shape[0]
        if n == 0:
            self._count(empty_examples=1)
            return None
        if n > self.seq_len:
            if self.overlong == "drop":
                self._count(dropped_examples=1, dropped_tokens=n)
                return None
            self._count(truncated_examples=1, truncated_tokens=n - self.seq_len)
            tokens, loss, n = tokens[: self.seq_len], loss[: self.seq_len], self.seq_len
        self._count(examples=1, tokens=n)
        return {"tokens": tokens.astype(np.int32, copy=False), "token_loss": loss}

    def _count(self, **counts):
        if self.stats is not None:
            self.stats.add(**counts)


def _is_kept(example) -> bool:
    return example is not None


def packed_rows_to_contract(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Packed rows ``{"tokens", "token_loss", "tokens_segment_ids", "tokens_positions"}`` [B, T] -> contract.

    ``targets[t] = tokens[t+1]`` and ``loss_mask[t] = token_loss[t+1]`` where ``t+1`` is in the same
    segment; 0 at each segment's last token and on padding (segment 0).
    """
    tokens = np.asarray(rows["tokens"], np.int32)
    token_loss = np.asarray(rows["token_loss"], np.float32)
    segment_ids = np.asarray(rows["tokens_segment_ids"], np.int32)
    positions = np.asarray(rows["tokens_positions"], np.int32)
    has_next = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, :-1] > 0)  # [B, T-1]
    targets = np.zeros_like(tokens)
    targets[:, :-1] = np.where(has_next, tokens[:, 1:], 0)
    loss_mask = np.zeros(tokens.shape, np.float32)
    loss_mask[:, :-1] = np.where(has_next, token_loss[:, 1:], 0.0)
    return {
        "tokens": np.where(segment_ids > 0, tokens, 0).astype(np.int32),
        "targets": targets,
        "positions": np.where(segment_ids > 0, positions, 0).astype(np.int32),
        "segment_ids": segment_ids,
        "loss_mask": loss_mask,
    }


class _StackToContract:
    """grain ``batch_fn``: stack packed rows, pad to ``batch_size`` rows, compute the contract."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __call__(self, rows):
        keys = ("tokens", "token_loss", "tokens_segment_ids", "tokens_positions")
        stacked = {k: np.stack([row[k] for row in rows]) for k in keys}
        missing = self.batch_size - len(rows)
        if missing:  # last, partial batch of a finite dataset: empty rows (segment 0) keep shapes static
            stacked = {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)]) for k, v in stacked.items()}
        return packed_rows_to_contract(stacked)


def pack_examples(
    ds: grain.IterDataset,
    seq_len: int,
    batch_size: int,
    *,
    overlong: str = "truncate",
    num_packing_bins: int | None = None,
    shuffle_rows: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
    stats: PackingStats | None = None,
) -> grain.IterDataset:
    """Pack examples ``{"tokens": int32[n], "token_loss": float32[n]}`` into contract batches.

    ``token_loss[i] = 1`` marks token ``i`` as a target to learn (assistant tokens in SFT, all
    ones in pretraining; a missing ``token_loss`` means all ones). Each batch holds ``batch_size``
    rows of ``seq_len`` (see ``intern_jax.data.contract``); every example is its own segment, so nothing
    attends or predicts across examples. Examples longer than ``seq_len`` are truncated or
    dropped (``overlong``) and counted in ``stats``; empty examples are skipped and counted.

    First-fit fills ``num_packing_bins`` rows (default ``max(64, batch_size)``) and emits them
    all once an example fits none: more bins, less padding. ``shuffle_rows`` shuffles the rows
    of each emitted group (seeded). A finite dataset ends with a partial batch padded with empty
    rows unless ``drop_remainder``.
    """
    if not isinstance(seq_len, int | np.integer) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if not isinstance(batch_size, int | np.integer) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong={overlong!r} is not a policy; use one of {OVERLONG_POLICIES}")
    if not isinstance(ds, grain.IterDataset):
        if isinstance(ds, grain.MapDataset):
            ds = ds.to_iter_dataset()
        else:
            raise TypeError(
                f"pack_examples expects a grain IterDataset or MapDataset, got {type(ds).__name__}; "
                "wrap a list with grain.MapDataset.source(examples)"
            )
    num_packing_bins = num_packing_bins or max(64, int(batch_size))
    if num_packing_bins <= 0:
        raise ValueError(f"num_packing_bins must be positive, got {num_packing_bins}")

    ds = ds.map(_FitToLength(int(seq_len), overlong, stats)).filter(_is_kept)
    ds = FirstFitPackIterDataset(
        ds,
        length_struct={"tokens": int(seq_len), "token_loss": int(seq_len)},
        num_packing_bins=int(num_packing_bins),
        shuffle_bins=shuffle_rows,
        seed=seed,
    )
    return ds.batch(int(batch_size), drop_remainder=drop_remainder, batch_fn=_StackToContract(int(batch_size)))
