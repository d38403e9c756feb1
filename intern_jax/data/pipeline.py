"""grain input pipeline for pretraining: token shards -> shuffled, mixed, host-sharded, packed batches.

``make_pretrain_iterator(DataConfig)`` reads a processed corpus directory (``manifest.json`` plus
ArrayRecord shards of int32 documents), and yields per-host batches in the training batch contract;
its state (``get_state``/``set_state``, or orbax via ``checkpoint.run.data_save_args``) resumes exactly.
It does not tokenise or filter text (``intern_jax.data.processing`` does) and it does not place
batches on devices (the training loop does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from grain.experimental import FlatMapIterDataset, FlatMapTransform

from intern_jax.checkpoint.run import CheckpointMismatch
from intern_jax.data.config import DataConfig, holdout_problem, holdout_stride
from intern_jax.data.packing import PackingStats, pack_examples

MANIFEST = "manifest.json"
ARRAY_RECORD_OPTIONS = "group_size:1"  # one record per chunk: cheap random access


def read_manifest(path: str | Path) -> dict:
    """The corpus manifest, checked: every listed shard exists and every source has documents."""
    if not str(path):
        raise ValueError("data.path is empty; set it to a processed corpus directory (with manifest.json)")
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path} does not exist; data.path must be a corpus directory written by "
            "scripts/process_data.py (or scripts/build_corpus.py)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{manifest_path} is damaged ({e}); rerun the command that wrote the corpus") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{manifest_path} is not a corpus manifest (a JSON object); rebuild the corpus")
    sources = manifest.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise ValueError(f"{manifest_path} lists no sources; rebuild the corpus")
    for name, entry in sources.items():
        for key in ("files", "documents", "tokens"):
            if key not in entry:
                raise ValueError(f"{manifest_path}: source {name!r} has no {key!r}; rebuild the corpus")
        missing = [f for f in entry["files"] if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{manifest_path}: source {name!r} lists missing shards {missing[:3]}")
    return manifest


def token_weights(manifest: dict, mixture: Mapping[str, float]) -> dict[str, float]:
    """Normalised token share per source: ``mixture``, or each source's share of the manifest's tokens."""
    sources = manifest["sources"]
    unknown = sorted(set(mixture) - set(sources))
    if unknown:
        raise ValueError(f"mixture names unknown source(s) {unknown}; the corpus has {sorted(sources)}")
    weights = dict(mixture) if mixture else {name: entry["tokens"] for name, entry in sources.items()}
    empty = [name for name in weights if sources[name]["documents"] <= 0 or sources[name]["tokens"] <= 0]
    if empty:
        raise ValueError(f"mixture source(s) {empty} have no documents in the corpus; leave them out")
    total = float(sum(weights.values()))
    return {name: w / total for name, w in sorted(weights.items())}


def document_proportions(manifest: dict, weights: Mapping[str, float]) -> dict[str, float]:
    """Documents to draw per source so that tokens follow ``weights``: weight / mean document length."""
    sources = manifest["sources"]
    return {name: w * sources[name]["documents"] / sources[name]["tokens"] for name, w in weights.items()}


class HoldoutSplit:
    """One side of a source split into held-out and training documents, without an index array.

    Document ``i`` is held out when ``i % m == 0`` (``m = holdout_stride(fraction)``): a
    systematic sample spread over the whole corpus, the same for every run and seed. The
    ``heldout=True`` view has ``ceil(n / m)`` documents, the training view the others, in order.
    Picklable (grain worker processes)."""

    def __init__(self, source, fraction: float, *, heldout: bool):
        self._source = source
        self._stride = holdout_stride(fraction)
        self._heldout = heldout
        n = len(source)
        held = -(-n // self._stride)
        if not heldout and n - held <= 0:
            raise ValueError(f"a source of {n} document(s) has none left to train on after holding out {held}")
        self._len = held if heldout else n - held

    def __len__(self) -> int:
        return self._len

    def index(self, j: int) -> int:
        """The source index of this view's ``j``-th document."""
        if not 0 <= j < self._len:
            raise IndexError(f"document {j} of a split of {self._len}")
        if self._heldout:
            return j * self._stride
        block, offset = divmod(j, self._stride - 1)
        return block * self._stride + 1 + offset

    def __getitem__(self, j):
        return self._source[self.index(int(j))]

    def __repr__(self) -> str:
        side = "held-out" if self._heldout else "training"
        return f"HoldoutSplit({self._source!r}, {side}: {self._len} documents, stride {self._stride})"


def decode_record(record: bytes) -> dict[str, np.ndarray]:
    """One ArrayRecord record (little-endian int32 token ids) -> ``{"tokens", "token_loss"}``."""
    if len(record) % 4:
        raise ValueError(f"token record of {len(record)} bytes is not a whole number of int32 ids; corrupt shard?")
    tokens = np.frombuffer(record, dtype="<i4").astype(np.int32)
    return {"tokens": tokens, "token_loss": np.ones(tokens.shape, np.float32)}


class SplitDocument(FlatMapTransform):
    """Split a document longer than ``seq_len`` into consecutive ``seq_len``-token chunks."""

    max_fan_out = 1 << 20

    def __init__(self, seq_len: int):
        self.seq_len = seq_len

    def flat_map(self, document):
        n = len(document["tokens"])
        if n <= self.seq_len:
            return [document]
        return [{k: v[s : s + self.seq_len] for k, v in document.items()} for s in range(0, n, self.seq_len)]


def source_dataset(
    files: Sequence[str], *, process_index: int, process_count: int, seed: int, shuffle: bool,
    holdout: float = 0.0,
) -> grain.MapDataset:
    """One source's training documents (all but the ``holdout`` ones) for this host: a disjoint
    ``[process_index::process_count]`` slice, shuffled afresh each epoch (seeded), repeated
    forever, decoded."""
    records = grain.sources.ArrayRecordDataSource(list(files))
    if holdout > 0:
        records = HoldoutSplit(records, holdout, heldout=False)
    ds = grain.MapDataset.source(records)
    ds = ds[process_index::process_count]
    if len(ds) == 0:
        raise ValueError(
            f"host {process_index} of {process_count} gets no documents from {files[:2]}...; "
            "the source has fewer documents than hosts"
        )
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return ds.repeat(None).map(decode_record)


def make_pretrain_dataset(
    cfg: DataConfig,
    *,
    process_index: int = 0,
    process_count: int = 1,
    stats: PackingStats | None = None,
) -> grain.IterDataset:
    """The pretraining pipeline as a grain ``IterDataset`` of this host's batches (see the module doc)."""
    if not isinstance(cfg, DataConfig):
        raise TypeError(f"expected a DataConfig, got {type(cfg).__name__}")
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count})")
    if cfg.batch_size % process_count:
        raise ValueError(
            f"data.batch_size={cfg.batch_size} is not divisible by the {process_count} JAX processes; "
            f"use a multiple of {process_count}"
        )
    manifest = read_manifest(cfg.path)
    root = Path(cfg.path)
    weights = token_weights(manifest, cfg.mixture)
    proportions = document_proportions(manifest, weights)
    read = grain.ReadOptions(num_threads=2, prefetch_buffer_size=64)
    sources = {}
    for i, name in enumerate(sorted(weights)):
        files = [str(root / f) for f in manifest["sources"][name]["files"]]
        ds = source_dataset(
            files, process_index=process_index, process_count=process_count, seed=cfg.seed + 7919 * i,
            shuffle=cfg.shuffle, holdout=cfg.holdout,
        )
        sources[name] = ds.to_iter_dataset(read)
    ds = sources[next(iter(sources))] if len(sources) == 1 else grain.IterDataset.mix(sources, proportions)
    ds = FlatMapIterDataset(ds, SplitDocument(cfg.seq_len))
    ds = pack_examples(
        ds,
        cfg.seq_len,
        cfg.batch_size // process_count,
        num_packing_bins=max(cfg.packing_bins, cfg.batch_size // process_count),
        shuffle_rows=cfg.shuffle,
        seed=cfg.seed,
        drop_remainder=True,
        stats=stats,
    )
    if cfg.num_workers > 0:
        _parse_absl_flags()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.num_workers, per_worker_buffer_size=max(cfg.prefetch, 1))
        )
    elif cfg.prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=cfg.prefetch)
    return ds


def make_eval_batches(
    cfg: DataConfig,
    *,
    path: str | Path = "",
    process_index: int = 0,
    process_count: int = 1,
    max_batches: int = 0,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Evaluation batches per source, this host's rows of each (batch contract, numpy).

    Without ``path``: the ``cfg.holdout`` documents of ``cfg.path`` (the ones its training
    pipeline leaves out); with ``path``: every document of that corpus. Documents are read in
    order (no shuffle, no repeat), split and packed as for training into ``cfg.batch_size //
    process_count`` rows of ``cfg.seq_len``; the last batch is padded with empty rows. At most
    ``max_batches`` per source (0: all). A host whose slice is empty gets no batches.
    """
    if cfg.batch_size % process_count:
        raise ValueError(f"data.batch_size={cfg.batch_size} is not divisible by the {process_count} JAX processes")
    if not str(path) and cfg.holdout <= 0:
        raise ValueError("evaluation needs held-out documents: set data.holdout (e.g. 0.01) or an evaluation corpus")
    root = Path(path or cfg.path)
    manifest = read_manifest(root)
    names = sorted(cfg.mixture) if cfg.mixture and not str(path) else sorted(manifest["sources"])
    out = {}
    for name in names:
        records = grain.sources.ArrayRecordDataSource([str(root / f) for f in manifest["sources"][name]["files"]])
        if not str(path):
            records = HoldoutSplit(records, cfg.holdout, heldout=True)
        ds = grain.MapDataset.source(records)[process_index::process_count].map(decode_record)
        ds = FlatMapIterDataset(ds.to_iter_dataset(), SplitDocument(cfg.seq_len))
        out[name] = packed_in_order(ds, cfg.seq_len, cfg.batch_size // process_count,
                                    num_packing_bins=cfg.packing_bins, max_batches=max_batches)
    return out


def packed_in_order(examples, seq_len: int, rows: int, *, num_packing_bins: int | None = None,
                    max_batches: int = 0) -> list[dict[str, np.ndarray]]:
    """Examples (a finite grain dataset, read once in order) packed into at most ``max_batches``
    (0: all) contract batches of ``rows`` x ``seq_len``, the last one padded with empty rows."""
    batches = []
    for batch in pack_examples(examples, seq_len, rows, num_packing_bins=num_packing_bins):
        batches.append(batch)
        if max_batches and len(batches) >= max_batches:
            break
    return batches


def _parse_absl_flags() -> None:
    """grain's worker processes read absl flags; outside ``absl.app.run`` mark them parsed (defaults)."""
    from absl import flags  # noqa: PLC0415

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class IteratorStateMismatch(CheckpointMismatch):
    """A saved iterator state made with another worker count or process layout: a setting to fix,
    not a damaged checkpoint."""


class PipelineIterator(grain.DatasetIterator):
    """A grain iterator whose state also records the worker and process layout it was made with.

    ``set_state`` refuses a state from a different ``num_workers`` or process layout (grain's
    states are only meaningful for the same layout) with a message naming both.
    """

    def __init__(self, dataset: grain.IterDataset, *, num_workers: int, process_index: int, process_count: int):
        super().__init__(iter(dataset))
        self._layout = {"num_workers": num_workers, "process_index": process_index, "process_count": process_count}

    def __next__(self):
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return {**self._layout, "pipeline": self._parent.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "pipeline" not in state:
            raise ValueError("not a state of make_pretrain_iterator's iterator (no 'pipeline' entry)")
        if state.get("num_workers") != self._layout["num_workers"]:
            raise IteratorStateMismatch(
                f"the saved data iterator state was made with num_workers={state.get('num_workers')} but this "
                f"iterator has num_workers={self._layout['num_workers']}; the worker count must stay the same "
                f"across restarts: set data.num_workers={state.get('num_workers')}"
            )
        for key in ("process_count", "process_index"):
            if state.get(key) != self._layout[key]:
                raise IteratorStateMismatch(
                    f"the saved data iterator state is for {key}={state.get(key)} but this iterator has "
                    f"{key}={self._layout[key]}; resume with the same number of JAX processes"
                )
        self._parent.set_state(state["pipeline"])

    def __str__(self) -> str:
        return f"PipelineIterator({self._layout})"


def make_pretrain_iterator(
    cfg: DataConfig,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    stats: PackingStats | None = None,
) -> PipelineIterator:
    """This host's batches of ``batch_size // process_count`` rows of ``seq_len`` (numpy, batch contract).

    ``process_index`` / ``process_count`` default to ``jax.process_index()`` / ``jax.process_count()``;
    each host reads a disjoint slice of every source, and the slices together are the whole corpus.
    """
    if process_index is None or process_count is None:
        import jax  # noqa: PLC0415  (only needed for the defaults)

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    ds = make_pretrain_dataset(cfg, process_index=process_index, process_count=process_count, stats=stats)
    return PipelineIterator(
        ds, num_workers=cfg.num_workers, process_index=process_index, process_count=process_count
    )


def write_token_corpus(
    directory: str | Path,
    sources: Mapping[str, Sequence[np.ndarray]],
    *,
    shards: int = 2,
    tokenizer: str = "",
    vocab_size: int = 0,
) -> dict:
    """Write documents (int32 token arrays) as a corpus directory in the processed format; returns
    the manifest. For tests, benchmarks and small experiments: real corpora come from
    ``intern_jax.data.processing``."""
    from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415

    directory = Path(directory)
    manifest = {"tokenizer": tokenizer, "vocab_size": int(vocab_size), "sources": {}}
    for name, documents in sources.items():
        (directory / name).mkdir(parents=True, exist_ok=True)
        entry = {"files": [], "documents": 0, "tokens": 0}
        count = max(1, min(shards, len(documents)))
        for shard in range(count):
            rel = f"{name}/{shard:05d}-of-{count:05d}.array_record"
            writer = ArrayRecordWriter(str(directory / rel), ARRAY_RECORD_OPTIONS)
            for doc in documents[shard::count]:
                writer.write(np.asarray(doc, dtype="<i4").tobytes())
                entry["documents"] += 1
                entry["tokens"] += len(doc)
            writer.close()
            entry["files"].append(rel)
        manifest["sources"][name] = entry
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


__all__ = [
    "DataConfig",
    "HoldoutSplit",
    "IteratorStateMismatch",
    "PipelineIterator",
    "decode_record",
    "document_proportions",
    "holdout_problem",
    "holdout_stride",
    "make_eval_batches",
    "make_pretrain_dataset",
    "make_pretrain_iterator",
    "packed_in_order",
    "read_manifest",
    "source_dataset",
    "token_weights",
    "write_token_corpus",
]
