"""The local runner: plan work shards, run the stages on all cores, dedup globally, write shards.

Phases (each resumable; finished work is marked by files written atomically, so a rerun after
a crash redoes only unfinished shards):
  1. clean (per work shard, in parallel): read -> normalise -> language -> filter -> pii,
     plus each document's content hash and MinHash signature -> ``DIR/work/clean/``;
  2. dedup (global, corpus order) and the optional model-based quality step -> ``DIR/work/``;
  3. tokenise (per work shard, in parallel) -> ``DIR/<source>/*.array_record`` + manifest,
     ``stats.json``, a table on stdout and ``funnel.png``.
The Beam runner (``beam_runner``) drives the same shard functions. No stage logic lives here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from intern_jax.data.processing import beam_runner, dedup, filters, language, normalise, pii, readers, shards
from intern_jax.data.processing.config import ProcessingConfig
from intern_jax.data.processing.documents import Document, StageStats, merge_stats

CLEAN_STAGES = ("read", "normalise", "language", "filter", "pii")
STAGES = ("extract", *CLEAN_STAGES, "dedup_exact", "dedup_near", "quality", "tokenise")
DOCUMENT_SHARD_WEIGHT = 64  # a PDF/EPUB/DOCX byte costs about this many text bytes to read (shard planning)
GLOBAL_FORMAT = 2  # bumped when global.json changes meaning: older caches are recomputed


@dataclasses.dataclass(frozen=True)
class WorkShard:
    id: str
    files: tuple[str, ...]


def fingerprint(*objs) -> str:
    """Short hash of settings: a done marker is valid only for the settings that made it."""
    blob = json.dumps([dataclasses.asdict(o) if dataclasses.is_dataclass(o) else o for o in objs], sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


def _clean_fingerprint(cfg: ProcessingConfig) -> str:
    return fingerprint(cfg.readers, cfg.normalise, cfg.language, cfg.filters, cfg.pii, cfg.dedup)


# ---- phase 0: plan ---------------------------------------------------------------------------


def plan_shards(inputs, cfg: ProcessingConfig, read_stats: StageStats) -> list[WorkShard]:
    """Input files grouped, in sorted order, into shards of about ``cfg.shard_bytes``. A shard's id
    hashes its files' paths, sizes and modification times, so edited inputs are redone."""
    files = readers.list_inputs(inputs, cfg.readers, read_stats)
    groups, current, size = [], [], 0
    for f in files:
        try:
            n = os.path.getsize(f)
        except OSError:
            n = 0
        if readers.file_kind(f, cfg.readers) in ("pdf", "epub", "docx"):
            n *= DOCUMENT_SHARD_WEIGHT  # extraction is slow: fewer documents per shard, more parallelism
        if current and size + n > cfg.shard_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(f)
        size += n
    if current:
        groups.append(current)
    out = []
    for group in groups:
        key = []
        for f in group:
            try:
                st = os.stat(f)
                key.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
            except OSError:
                key.append([os.path.abspath(f), -1, -1])
        out.append(WorkShard(hashlib.blake2b(json.dumps(key).encode(), digest_size=8).hexdigest(), tuple(group)))
    return out


# ---- phase 1: clean one shard --------------------------------------------------------------------


def read_shard(shard: WorkShard, cfg: ProcessingConfig, stats: StageStats,
               extract_stats: StageStats | None = None) -> Iterator[Document]:
    n = 0
    for path in shard.files:
        for doc in readers.read_file(path, cfg.readers, stats, extract_stats):
            doc.id = f"{shard.id}-{n:08d}"
            n += 1
            stats.kept(doc)
            yield doc


def clean_documents(docs, cfg: ProcessingConfig, stats: dict[str, StageStats]) -> Iterator[Document]:
    """The per-document stages, chained lazily: normalise -> language -> filter -> pii."""
    docs = normalise.normalise(docs, cfg.normalise, stats["normalise"])
    docs = language.identify_language(docs, cfg.language, stats["language"])
    docs = filters.quality_filter(docs, cfg.filters, stats["filter"])
    return pii.scrub_pii(docs, cfg.pii, stats["pii"])


def clean_shard(shard: WorkShard, work: Path, cfg: ProcessingConfig) -> str:
    """Phase 1 for one shard; returns ``"done"`` or ``"skipped"`` (already done with these settings)."""
    out = Path(work) / "clean"
    marker, fp = out / f"{shard.id}.done", _clean_fingerprint(cfg)
    if marker.is_file() and marker.read_text().strip() == fp:
        return "skipped"
    out.mkdir(parents=True, exist_ok=True)
    stats = {name: StageStats(name) for name in ("extract", *CLEAN_STAGES)}
    t0 = time.perf_counter()
    tmp_docs = out / f".{shard.id}.jsonl.tmp"
    signatures = []
    with open(tmp_docs, "w", encoding="utf-8") as f:
        for doc in clean_documents(read_shard(shard, cfg, stats["read"], stats["extract"]), cfg, stats):
            t1 = time.perf_counter()
            row = {"id": doc.id, "source": doc.source, "path": doc.path, "text": doc.text,
                   "hash": dedup.content_hash(doc.text), "meta": doc.meta}
            signatures.append(dedup.minhash_signature(doc.text, cfg.dedup))
            stats.setdefault("signatures", StageStats("signatures")).seconds += time.perf_counter() - t1
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    stats["read"].seconds = max(
        0.0, time.perf_counter() - t0 - sum(s.seconds for k, s in stats.items() if k != "read")
    )
    sig = np.stack(signatures) if signatures else np.zeros((0, cfg.dedup.num_perm), np.uint32)
    tmp_sig = out / f".{shard.id}.sig.npy.tmp"
    with open(tmp_sig, "wb") as fh:
        np.save(fh, sig)
    os.replace(tmp_docs, out / f"{shard.id}.jsonl")
    os.replace(tmp_sig, out / f"{shard.id}.sig.npy")
    signature_seconds = stats.pop("signatures", StageStats("signatures")).seconds
    shards.write_json_atomic(out / f"{shard.id}.stats.json",
                             {**{k: s.to_dict() for k, s in stats.items()}, "signature_seconds": signature_seconds})
    marker_tmp = out / f".{shard.id}.done.tmp"
    marker_tmp.write_text(fp)
    os.replace(marker_tmp, marker)
    return "done"


def _clean_rows(work: Path, shard: WorkShard) -> Iterator[dict]:
    with open(work / "clean" / f"{shard.id}.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


# ---- running tasks on all cores ----------------------------------------------------------------


def run_tasks(fn, shard_list, args, workers: int, desc: str, progress: bool) -> list[str]:
    """``fn(shard, *args)`` for every shard, on ``workers`` processes (in this process if one).
    Every shard is attempted; failures are raised together at the end."""
    results, errors = {}, {}
    bar = tqdm(total=len(shard_list), desc=desc, unit="shard", disable=not progress)
    if workers <= 1 or len(shard_list) <= 1:
        for s in shard_list:
            try:
                results[s.id] = fn(s, *args)
            except Exception as e:  # noqa: BLE001  (reported below, after the other shards ran)
                errors[s.id] = e
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {pool.submit(fn, s, *args): s for s in shard_list}
            for fut in concurrent.futures.as_completed(futures):
                s = futures[fut]
                try:
                    results[s.id] = fut.result()
                except Exception as e:  # noqa: BLE001
                    errors[s.id] = e
                bar.update()
    bar.close()
    if errors:
        first_id, first = next(iter(errors.items()))
        raise RuntimeError(
            f"{len(errors)} of {len(shard_list)} shards failed in {desc} (first: shard {first_id} with files "
            f"{[s.files for s in shard_list if s.id == first_id][0][:3]}: {type(first).__name__}: {first}); "
            "finished shards are kept, rerun the same command to resume"
        ) from first
    return [results[s.id] for s in shard_list]


def num_workers(cfg: ProcessingConfig) -> int:
    return cfg.num_workers or os.cpu_count() or 1


# ---- phase 2: global dedup and quality -------------------------------------------------------


def dedup_records(work: Path, shard_list: list[WorkShard]) -> Iterator[dedup.DedupRecord]:
    for s in shard_list:
        sig = np.load(work / "clean" / f"{s.id}.sig.npy")
        for row, signature in zip(_clean_rows(work, s), sig, strict=True):
            nbytes = len(row["text"].encode("utf-8", "surrogatepass"))
            yield dedup.DedupRecord(row["id"], row["hash"], signature, nbytes)


def global_pass(work: Path, shard_list: list[WorkShard], cfg: ProcessingConfig, progress: bool = True) -> dict:
    """Dedup over the whole corpus, then model-based quality; cached in ``work/global.json``."""
    path = work / "global.json"
    fp = fingerprint(_clean_fingerprint(cfg), cfg.quality, [s.id for s in shard_list], GLOBAL_FORMAT)
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("fingerprint") == fp:
            return cached
    exact, near = StageStats("dedup_exact"), StageStats("dedup_near")
    total = sum(1 for s in shard_list for _ in open(work / "clean" / f"{s.id}.jsonl", "rb"))
    records = tqdm(dedup_records(work, shard_list), total=total, desc="dedup", unit="doc", disable=not progress)
    dropped = dedup.find_duplicates(records, cfg.dedup, exact, near)
    quality_stats = StageStats("quality")
    if cfg.quality.model:
        from intern_jax.data.processing import quality  # noqa: PLC0415  (imports jax)

        kept = (Document(r["id"], r["text"], r["path"], r["source"])
                for s in shard_list for r in _clean_rows(work, s) if r["id"] not in dropped)
        dropped.update(quality.perplexity_filter(kept, cfg.quality, quality_stats, progress=progress))
    else:  # skipped: every document passes through
        quality_stats.off = "no model configured"
        quality_stats.docs_in = quality_stats.docs_out = near.docs_out
        quality_stats.bytes_in = quality_stats.bytes_out = near.bytes_out
    result = {"fingerprint": fp, "dropped": dropped,
              "stats": {s.name: s.to_dict() for s in (exact, near, quality_stats)},
              "quality": cfg.quality.model or "off (no model configured)"}
    shards.write_json_atomic(path, result)
    return result


def clean_corpus(inputs, output, cfg: ProcessingConfig, progress: bool = True) -> list[WorkShard]:
    """Phases 1 and 2; returns the work shards (their list is kept in ``work/shards.json``)."""
    output = Path(output)
    work = output / "work"
    read_listing = StageStats("read")
    shard_list = plan_shards(inputs, cfg, read_listing)
    if not shard_list:
        raise ValueError(
            f"no readable input under {list(map(str, inputs))}: give JSONL, text/Markdown, HTML, Parquet "
            "or source files, or directories holding them"
        )
    shards.write_json_atomic(work / "shards.json", {
        "shards": [dataclasses.asdict(s) for s in shard_list], "listing": read_listing.to_dict()})
    if cfg.runner == "beam":
        beam_runner.run_shards(clean_shard, shard_list, (work, cfg), "clean")
    else:
        run_tasks(clean_shard, shard_list, (work, cfg), min(num_workers(cfg), len(shard_list)), "clean", progress)
    global_pass(work, shard_list, cfg, progress)
    return shard_list


def load_shard_list(output) -> list[WorkShard]:
    path = Path(output) / "work" / "shards.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run clean_corpus on {output} first")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [WorkShard(s["id"], tuple(s["files"])) for s in data["shards"]]


def kept_documents(output) -> Iterator[Document]:
    """Documents that survived phases 1 and 2, in corpus order."""
    work = Path(output) / "work"
    dropped = json.loads((work / "global.json").read_text(encoding="utf-8"))["dropped"]
    for s in load_shard_list(output):
        for r in _clean_rows(work, s):
            if r["id"] not in dropped:
                yield Document(r["id"], r["text"], r["path"], r["source"], meta=r.get("meta", {}))


# ---- phase 3: tokenise and publish -----------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _load_tokenizer(path: str):
    from intern_jax.tokenizer import load_tokenizer  # noqa: PLC0415

    return load_tokenizer(path)


def tokenise_shard(shard: WorkShard, work: Path, cfg: ProcessingConfig, tokenizer_path: str) -> str:
    work = Path(work)
    directory = work / "tokens" / shard.id
    marker = directory / "done.json"
    global_fp = json.loads((work / "global.json").read_text(encoding="utf-8"))["fingerprint"]
    fp = fingerprint(global_fp, cfg.output, str(Path(tokenizer_path).resolve()))
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fp:
        return "skipped"
    dropped = json.loads((work / "global.json").read_text(encoding="utf-8"))["dropped"]
    tokenizer = _load_tokenizer(str(tokenizer_path))
    stats = StageStats("tokenise")
    docs = (Document(r["id"], r["text"], r["path"], r["source"]) for r in _clean_rows(work, shard)
            if r["id"] not in dropped)
    counts = shards.write_records_by_source(shards.tokenise(docs, tokenizer, cfg.output, stats), directory)
    shards.write_json_atomic(marker, {"fingerprint": fp, "counts": counts, "stats": stats.to_dict()})
    return "done"


def default_tokenizer_path() -> str:
    from intern_jax.checkpoint import embedded_model_path  # noqa: PLC0415  (imports jax: only when needed)

    return str(embedded_model_path())


def write_token_shards(output, cfg: ProcessingConfig, tokenizer_path: str | None = None,
                       progress: bool = True) -> dict:
    """Phase 3: token shards, manifest, stats.json, the stats table and funnel chart; returns stats."""
    from intern_jax.data.processing import report  # noqa: PLC0415

    output = Path(output)
    work = output / "work"
    tokenizer_path = str(tokenizer_path or cfg.output.tokenizer or default_tokenizer_path())
    vocab_size = _load_tokenizer(tokenizer_path).vocab_size
    shard_list = load_shard_list(output)
    if cfg.runner == "beam":
        beam_runner.run_shards(tokenise_shard, shard_list, (work, cfg, tokenizer_path), "tokenise")
    else:
        run_tasks(tokenise_shard, shard_list, (work, cfg, tokenizer_path),
                  min(num_workers(cfg), len(shard_list)), "tokenise", progress)
    parts = []
    for s in shard_list:
        done = json.loads((work / "tokens" / s.id / "done.json").read_text(encoding="utf-8"))
        parts.append((work / "tokens" / s.id, done["counts"]))
    manifest = shards.publish_shards(output, parts, tokenizer_path, vocab_size)
    stats = collect_stats(output)
    stats["manifest"] = {k: {"documents": v["documents"], "tokens": v["tokens"]}
                         for k, v in manifest["sources"].items()}
    shards.write_json_atomic(output / "stats.json", stats)
    report.print_table(stats)
    report.funnel_chart(stats, output / "funnel.png")
    if cfg.output.write_tfds:
        from intern_jax.data.processing import tfds_builder  # noqa: PLC0415

        tfds_builder.build_tfds_dataset(output)
    return stats


def collect_stats(output) -> dict:
    """Per-stage stats of a run, merged over shards, in pipeline order."""
    output = Path(output)
    work = output / "work"
    info = json.loads((work / "shards.json").read_text(encoding="utf-8"))
    groups = [{"read": StageStats.from_dict("read", info["listing"])}]
    signature_seconds = 0.0
    for s in load_shard_list(output):
        d = json.loads((work / "clean" / f"{s.id}.stats.json").read_text(encoding="utf-8"))
        signature_seconds += d.pop("signature_seconds", 0.0)
        groups.append({k: StageStats.from_dict(k, v) for k, v in d.items()})
    glob = json.loads((work / "global.json").read_text(encoding="utf-8"))
    groups.append({k: StageStats.from_dict(k, v) for k, v in glob["stats"].items()})
    for s in load_shard_list(output):
        done = work / "tokens" / s.id / "done.json"
        if done.is_file():
            groups.append({"tokenise": StageStats.from_dict("tokenise", json.loads(done.read_text())["stats"])})
    merged = merge_stats(*groups)
    if "extract" in merged and not merged["extract"].docs_in:
        del merged["extract"]  # no PDF, EPUB or DOCX input
    if "dedup_exact" in merged:
        merged["dedup_exact"].seconds += signature_seconds  # hashing and MinHash ran during phase 1
    return {"stages": {k: merged[k].to_dict() for k in STAGES if k in merged}, "quality_model": glob["quality"],
            "shards": len(info["shards"])}


def process(inputs, output, cfg: ProcessingConfig | None = None, progress: bool = True) -> dict:
    """The whole pipeline: ``inputs`` (files / directories) -> token shards under ``output``.
    A run that keeps no document at all is a ValueError that says why (``read_problems``)."""
    cfg = cfg or ProcessingConfig()
    clean_corpus(inputs, output, cfg, progress)
    if next(kept_documents(output), None) is None:  # before tokenising: nothing to write
        problems = read_problems(collect_stats(output), output, cfg.readers.text_field)
        raise ValueError(f"no documents were kept from {', '.join(map(str, inputs))}: "
                         f"{'; '.join(problems) or 'the inputs hold no documents, or the filters dropped them all'}")
    return write_token_shards(output, cfg, progress=progress)


# Why the read stage drops what it drops, and what to do about it.
READ_DROP_HINTS = {
    "missing_text_field": "records without the text field '{text_field}' (set readers.text_field to the field that "
                          "holds the text)",
    "malformed_json": "JSONL lines that are not JSON",
    "invalid_utf8": "files that are not UTF-8 text (binary files?)",
    "unreadable_file": "files that could not be read (check their permissions)",
    "missing_file": "files that disappeared before they were read",
    "missing_path": "input paths that do not exist",
    "file_too_large": "files larger than readers.max_file_bytes",
    "unsupported_file_type": "files of a type no reader handles",
    "no_main_text": "HTML pages without main text",
}


def read_problems(stats: dict, output=None, text_field: str = "text") -> list[str]:
    """One phrase per reason the read stage dropped something (``stats`` as ``process`` returns it),
    naming the files that could not be read (from ``output``'s work list) and the setting to change."""
    drops = stats.get("stages", {}).get("read", {}).get("drops", {})
    problems = []
    for reason, n in sorted(drops.items()):
        text = f"{n} x " + READ_DROP_HINTS.get(reason, reason).format(text_field=text_field)
        if reason in ("unreadable_file", "missing_file") and output is not None:
            try:
                files = [f for s in load_shard_list(output) for f in s.files]
            except (OSError, ValueError, KeyError):
                files = []
            named = [f for f in files if not os.access(f, os.R_OK) or not os.path.isfile(f)]
            if named:
                text += ": " + ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
        problems.append(text)
    failures = stats.get("stages", {}).get("extract", {}).get("failures", [])
    if failures:
        named = ", ".join(f"{f['path']} ({f['reason']})" for f in failures[:5])
        problems.append(f"{len(failures)} x documents or pages that could not be extracted: {named}"
                        + (f" and {len(failures) - 5} more" if len(failures) > 5 else ""))
    return problems
