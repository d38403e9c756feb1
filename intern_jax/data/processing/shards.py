"""Tokenisation into ArrayRecord shards grouped by source, and the corpus manifest.

One record per document: little-endian int32 token ids as raw bytes, BOS prepended and EOS
appended when the tokenizer has them (the batch contract). Shards live in ``DIR/<source>/``
named ``NNNNN-of-MMMMM.array_record``; ``DIR/manifest.json`` lists them with document and
token counts and the tokenizer path, which is what the grain input pipeline reads. Packing
into training rows is not done here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from intern_jax.data.processing.config import OutputConfig
from intern_jax.data.processing.documents import Document, StageStats

ARRAY_RECORD_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for grain
MANIFEST = "manifest.json"


def encode_document(text: str, tokenizer, cfg: OutputConfig) -> np.ndarray:
    ids = tokenizer.encode(text)
    if cfg.add_bos and tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id, *ids]
    if cfg.add_eos and tokenizer.eos_id is not None:
        ids = [*ids, tokenizer.eos_id]
    return np.asarray(ids, dtype="<i4")


def record_to_tokens(record: bytes) -> np.ndarray:
    return np.frombuffer(record, dtype="<i4")


def tokenise(docs: Iterable[Document], tokenizer, cfg: OutputConfig, stats: StageStats) -> Iterator[
    tuple[str, bytes]
]:
    """(source, record bytes) per document."""
    for doc in docs:
        t0 = time.perf_counter()
        stats.seen(doc)
        tokens = encode_document(doc.text, tokenizer, cfg)
        stats.tokens += len(tokens)
        stats.counts[f"tokens_{doc.source}"] += len(tokens)
        stats.seconds += time.perf_counter() - t0
        stats.kept(doc)
        yield doc.source, tokens.tobytes()


def write_records_by_source(records: Iterable[tuple[str, bytes]], directory: Path) -> dict[str, dict]:
    """Write ``directory/<source>.array_record`` files; {source: {"documents", "tokens"}}."""
    from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    writers, counts = {}, {}
    try:
        for source, record in records:
            if source not in writers:
                writers[source] = ArrayRecordWriter(str(directory / f"{source}.array_record"), ARRAY_RECORD_OPTIONS)
                counts[source] = {"documents": 0, "tokens": 0}
            writers[source].write(record)
            counts[source]["documents"] += 1
            counts[source]["tokens"] += len(record) // 4
    finally:
        for w in writers.values():
            w.close()
    return counts


def read_records(path: str | Path) -> list[np.ndarray]:
    """All documents of one ArrayRecord shard as int32 token arrays."""
    from array_record.python.array_record_module import ArrayRecordReader  # noqa: PLC0415

    reader = ArrayRecordReader(str(path))
    try:
        return [record_to_tokens(r) for r in reader.read_all()]
    finally:
        reader.close()


def publish_shards(output: Path, parts: list[tuple[Path, dict[str, dict]]], tokenizer_path: str,
                   vocab_size: int) -> dict:
    """Move per-work-shard files into ``output/<source>/NNNNN-of-MMMMM.array_record`` (in work-shard
    order) and write the manifest; safe to repeat after an interruption."""
    sources: dict[str, dict] = {}
    for _, counts in parts:
        for source in counts:
            sources.setdefault(source, {"files": [], "documents": 0, "tokens": 0})
    for source, entry in sorted(sources.items()):
        own = [(d, c[source]) for d, c in parts if source in c]
        (output / source).mkdir(parents=True, exist_ok=True)
        for i, (directory, c) in enumerate(own):
            name = f"{source}/{i:05d}-of-{len(own):05d}.array_record"
            src, dst = directory / f"{source}.array_record", output / name
            if src.exists():
                os.replace(src, dst)
            elif not dst.exists():
                raise FileNotFoundError(f"token shard {src} is missing; delete {directory} and rerun")
            entry["files"].append(name)
            entry["documents"] += c["documents"]
            entry["tokens"] += c["tokens"]
    tok = Path(tokenizer_path)
    try:
        tok_str = str(tok.resolve().relative_to(output.resolve()))
    except ValueError:
        tok_str = str(tok.resolve())
    manifest = {"tokenizer": tok_str, "vocab_size": int(vocab_size), "sources": dict(sorted(sources.items()))}
    write_json_atomic(output / MANIFEST, manifest)
    return manifest


def load_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run scripts/process_data.py --output {directory} first")
    return json.loads(path.read_text(encoding="utf-8"))


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temporary file and rename it into place (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
