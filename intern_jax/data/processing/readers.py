"""Readers: JSONL, plain text / Markdown, source-code trees, HTML (trafilatura), Parquet, and PDF,
EPUB and DOCX documents (to Markdown, through ``extract``).

``list_inputs`` expands paths into supported files; ``read_file`` yields ``Document``s from
one file. Bad records (malformed JSON, undecodable bytes, missing text field, unreadable or
missing files) are counted by reason in the ``read`` stage's stats, never raised. Documents
have their own ``extract`` stage stats: pages, OCR'd pages, tables, images, and each file or
page that could not be read, by name and reason. Readers do not clean text: that is ``normalise``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

from intern_jax.data.processing import extract
from intern_jax.data.processing.config import ReaderConfig
from intern_jax.data.processing.documents import Document, StageStats

TEXT_EXTENSIONS = (".txt", ".md", ".markdown", ".rst", ".text")
HTML_EXTENSIONS = (".html", ".htm", ".xhtml")
JSONL_EXTENSIONS = (".jsonl", ".jsonl.gz", ".ndjson")
PARQUET_EXTENSIONS = (".parquet",)
SKIPPED_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".tox"}


def file_kind(path: str | Path, cfg: ReaderConfig) -> str | None:
    """``jsonl``, ``text``, ``html``, ``parquet``, ``code``, ``pdf``, ``epub``, ``docx`` or None
    (unsupported). By extension; a file with another extension is sniffed for PDF/EPUB/DOCX content."""
    name = str(path).lower()
    for kind, exts in (("jsonl", JSONL_EXTENSIONS), ("parquet", PARQUET_EXTENSIONS),
                       ("html", HTML_EXTENSIONS), ("text", TEXT_EXTENSIONS), ("code", cfg.code_extensions),
                       ("pdf", (".pdf",)), ("epub", (".epub",)), ("docx", (".docx",))):
        if name.endswith(tuple(exts)):
            return kind
    return extract.sniff_kind(path)


def list_inputs(paths, cfg: ReaderConfig, stats: StageStats) -> list[str]:
    """Supported files under ``paths`` (files or directories), sorted; others counted by reason."""
    files: list[str] = []
    for p in map(Path, paths):
        if not p.exists():
            stats.drop("missing_path")
            continue
        candidates = [p] if p.is_file() else _walk(p)
        for f in candidates:
            if file_kind(f, cfg) is None:
                if p.is_file():  # named explicitly: say so; files inside trees are just skipped
                    stats.drop("unsupported_file_type")
                continue
            files.append(str(f))
    return sorted(set(files))


def _walk(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def decode_text(raw: bytes, cfg: ReaderConfig, stats: StageStats) -> str | None:
    """UTF-8 text; a few undecodable bytes become U+FFFD (counted), many drop the document."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.count("\ufffd".encode())
    if bad > cfg.max_invalid_utf8_fraction * max(len(raw), 1):
        stats.drop("invalid_utf8")
        return None
    stats.counts["invalid_utf8_bytes_replaced"] += bad
    return text


def read_file(path: str, cfg: ReaderConfig, stats: StageStats,
              extract_stats: StageStats | None = None) -> Iterator[Document]:
    """Documents of one file; ``Document.id`` is left empty for the caller to number. PDF, EPUB and
    DOCX files are counted in ``extract_stats`` (``stats`` when not given) and then in ``stats``."""
    kind = file_kind(path, cfg)
    try:
        size = os.path.getsize(path)
        if size > cfg.max_file_bytes:
            stats.drop("file_too_large")
            return
        if kind in ("pdf", "epub", "docx"):
            doc = read_document(path, kind, cfg, extract_stats or stats)
            if doc is not None:
                stats.docs_in += 1
                stats.bytes_in += len(doc.text.encode("utf-8", "surrogatepass"))
                yield doc
        elif kind == "jsonl":
            yield from _read_jsonl(path, cfg, stats)
        elif kind == "parquet":
            yield from _read_parquet(path, cfg, stats)
        else:
            with open(path, "rb") as f:
                raw = f.read()
            stats.docs_in += 1
            stats.bytes_in += len(raw)
            text = decode_text(raw, cfg, stats)
            if text is None:
                return
            if kind == "html":
                text = _html_main_text(text)
                if text is None:
                    stats.drop("no_main_text")
                    return
            yield Document(id="", text=text, path=path, is_code=(kind == "code"))
    except FileNotFoundError:
        stats.drop("missing_file")
    except OSError:
        stats.drop("unreadable_file")


def _read_jsonl(path: str, cfg: ReaderConfig, stats: StageStats) -> Iterator[Document]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            stats.docs_in += 1
            stats.bytes_in += len(raw)
            line = decode_text(raw, cfg, stats)
            if line is None:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                stats.drop("malformed_json")
                continue
            if not isinstance(record, dict) or not isinstance(record.get(cfg.text_field), str):
                stats.drop("missing_text_field")
                continue
            meta = {"record_id": record[cfg.id_field]} if cfg.id_field in record else {}
            yield Document(id="", text=record[cfg.text_field], path=f"{path}:{lineno}", meta=meta)


def _read_parquet(path: str, cfg: ReaderConfig, stats: StageStats) -> Iterator[Document]:
    import pyarrow as pa  # noqa: PLC0415  (only when Parquet is read)
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        stats.drop("unreadable_file")
        return
    if cfg.text_field not in pf.schema_arrow.names:
        stats.docs_in += pf.metadata.num_rows
        stats.drop("missing_text_field", pf.metadata.num_rows)
        return
    row = 0
    for batch in pf.iter_batches(columns=[cfg.text_field]):
        for text in batch.column(0).to_pylist():
            row += 1
            stats.docs_in += 1
            if not isinstance(text, str):
                stats.drop("missing_text_field")
                continue
            stats.bytes_in += len(text.encode("utf-8", "surrogatepass"))
            yield Document(id="", text=text, path=f"{path}:{row}")


def _html_main_text(html: str) -> str | None:
    import trafilatura  # noqa: PLC0415  (slow import; only for HTML)

    try:
        return trafilatura.extract(html, include_comments=False, include_tables=True) or None
    except Exception:  # noqa: BLE001  (lxml raises many types on broken markup)
        return None


def read_document(path: str, kind: str, cfg: ReaderConfig, stats: StageStats) -> Document | None:
    """One PDF / EPUB / DOCX as a Markdown ``Document``; a file that cannot be read, or a page that
    cannot, is counted and listed with its reason in ``stats.failures``."""
    import time  # noqa: PLC0415

    t0 = time.perf_counter()
    stats.docs_in += 1
    stats.bytes_in += os.path.getsize(path)
    try:
        ex = extract.extract_document(path, cfg.documents, kind)
    except extract.DocumentError as e:
        stats.drop(f"{kind}_{e.reason}")
        stats.failures.append({"path": path, "reason": e.reason, "message": str(e)})
        return None
    except Exception as e:  # noqa: BLE001  (a library failing on one odd file must not stop the run)
        stats.drop(f"{kind}_extraction_error")
        stats.failures.append({"path": path, "reason": "extraction_error", "message": f"{type(e).__name__}: {e}"})
        return None
    finally:
        stats.seconds += time.perf_counter() - t0
    stats.counts[f"{kind}_documents"] += 1
    stats.counts[f"{kind}_pages"] += ex.pages
    for name, n in (("ocr_pages", len(ex.ocr_pages)), ("tables", ex.tables), ("images", len(ex.images)),
                    ("unreadable_pages", len(ex.unreadable_pages)), ("header_footer_lines_removed", ex.removed_lines)):
        if n:
            stats.counts[f"{kind}_{name}"] += n
    for bad in ex.unreadable_pages:
        stats.failures.append({"path": path, **bad})
    if not ex.markdown.strip():
        stats.drop(f"{kind}_no_text")
        stats.failures.append({"path": path, "reason": "no_text", "message": f"{path}: no text was extracted"})
        return None
    stats.kept(Document(id="", text=ex.markdown, path=path))
    meta = {"format": kind, "pages": ex.pages, "ocr_pages": ex.ocr_pages, "tables": ex.tables,
            "images": [{"page": im["page"], "caption": im["caption"]} for im in ex.images if im["caption"]]}
    return Document(id="", text=ex.markdown, path=path, meta=meta)
