"""Documents (PDF, EPUB, DOCX) to Markdown: the shared result type, file sniffing, and ``--extract-only``.

``extract_document(path, cfg)`` returns an ``Extraction`` (Markdown plus page count, OCR'd pages,
tables, images with captions, unreadable pages, seconds) or raises ``DocumentError`` with a short
reason code (``encrypted``, ``truncated``, ``empty_file``, ``not_a_pdf``, ...) and a sentence for
people. The format readers live in ``pdf_reader``, ``epub_reader`` and ``docx_reader``; this module
imports none of their libraries until a document is read. Cleaning the text is ``normalise``'s job.
"""

from __future__ import annotations

import json
import os
import re
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from intern_jax.data.processing.config import DocumentConfig

DOCUMENT_EXTENSIONS = {".pdf": "pdf", ".epub": "epub", ".docx": "docx"}
_CJK = r"\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_GAP = re.compile(rf"(?<=[{_CJK}]) +(?=[{_CJK}])")


class DocumentError(Exception):
    """A document that cannot be extracted: ``reason`` is a short code, the message says what to do."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Extraction:
    markdown: str
    kind: str  # pdf | epub | docx
    backend: str = ""
    pages: int = 0  # PDF pages, EPUB spine documents, 1 for DOCX
    ocr_pages: list[int] = field(default_factory=list)  # 1-based
    tables: int = 0
    images: list[dict] = field(default_factory=list)  # {"page", "bbox", "caption", "file"}
    unreadable_pages: list[dict] = field(default_factory=list)  # {"page", "reason"}
    removed_lines: int = 0  # running headers, footers and page numbers taken out
    seconds: float = 0.0
    page_texts: list[str] = field(default_factory=list, repr=False)  # PDF: each page's Markdown (benchmarks)

    def sidecar(self, path: str) -> dict:
        d = asdict(self)
        d.pop("markdown")
        d.pop("page_texts")
        return {"path": path, **d, "seconds": round(self.seconds, 3), "chars": len(self.markdown)}


def document_kind(path) -> str | None:
    """``pdf``, ``epub`` or ``docx`` by extension, else by content (magic bytes); None otherwise."""
    kind = DOCUMENT_EXTENSIONS.get(os.path.splitext(str(path))[1].lower())
    return kind or sniff_kind(path)


def sniff_kind(path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return None
    if b"%PDF-" in head:
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        if b"mimetypeapplication/epub+zip" in head[:128]:
            return "epub"
        try:
            with zipfile.ZipFile(path) as z:
                return "docx" if "word/document.xml" in z.namelist() else None
        except (zipfile.BadZipFile, OSError):
            return None
    return None


def describe_bytes(head: bytes) -> str:
    """What a file that should be a document looks like instead, for error messages."""
    text = head.lstrip()[:64].lower()
    if not head:
        return "it is empty (0 bytes)"
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "it looks like HTML/XML (a web page saved under the wrong name?)"
    if head.startswith(b"PK\x03\x04"):
        return "it is a ZIP archive"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return "it is an OLE compound file (legacy .doc/.xls, or a password-protected Office file)"
    return f"it starts with {head[:16]!r}"


def extract_document(path, cfg: DocumentConfig | None = None, kind: str | None = None) -> Extraction:
    """Markdown of one document; raises ``DocumentError`` for a file that cannot be read."""
    cfg = cfg or DocumentConfig()
    kind = kind or document_kind(path)
    t0 = time.perf_counter()
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise DocumentError("unreadable_file", f"{path}: {e.strerror or e}") from e
    if size == 0:
        raise DocumentError("empty_file", f"{path} is empty (0 bytes); re-download or remove it")
    if kind == "pdf":
        from intern_jax.data.processing import pdf_reader  # noqa: PLC0415

        out = pdf_reader.extract_pdf(path, cfg)
    elif kind == "epub":
        from intern_jax.data.processing import epub_reader  # noqa: PLC0415

        out = epub_reader.extract_epub(path, cfg)
    elif kind == "docx":
        from intern_jax.data.processing import docx_reader  # noqa: PLC0415

        out = docx_reader.extract_docx(path, cfg)
    else:
        raise DocumentError("unsupported_document", f"{path}: not a PDF, EPUB or DOCX file")
    out.seconds = time.perf_counter() - t0
    return out


def check_backend(cfg: DocumentConfig) -> None:
    """A ValueError up front when the chosen PDF backend is not installed here."""
    import shutil  # noqa: PLC0415

    if cfg.pdf_backend == "mineru" and shutil.which("mineru") is None:
        raise ValueError("pdf_backend=mineru, but the mineru command is not installed; pip install mineru and "
                         "download its layout and formula models, or use the default pdf_backend=pymupdf")


def save_image(cfg: DocumentConfig, doc_path, page: int, index: int, data: bytes, ext: str) -> str:
    """Write an embedded image to ``cfg.image_dir`` (when set) as ``<doc>-p<page>-<index>.<ext>``."""
    if not cfg.image_dir or not data:
        return ""
    out = Path(cfg.image_dir) / f"{Path(doc_path).stem}-p{page}-{index}.{ext.lstrip('.').lower() or 'bin'}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return str(out)


# ---- Markdown helpers shared by the readers -------------------------------------------------


def join_lines(lines) -> str:
    """Lines of one paragraph as one string: a word hyphenated across a line end is made whole
    ("extraor-" + "dinary"), CJK lines join without a space, others with one."""
    out = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if not out:
            out = line
        elif re.search(r"[^\W\d_]-$", out) and line[:1].islower():
            out = out[:-1] + line
        elif re.match(rf"[{_CJK}]", out[-1]) and re.match(rf"[{_CJK}]", line[0]):
            out += line
        else:
            out += " " + line
    return _CJK_GAP.sub("", out)


def markdown_table(rows: list[list[str]]) -> str:
    """A Markdown (GFM) table; the first row is the header. Cells are flattened to one line."""
    width = max((len(r) for r in rows), default=0)
    if not width:
        return ""
    cells = [[" ".join((c or "").split()).replace("|", "\\|") for c in r] + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


# ---- --extract-only ------------------------------------------------------------------------------


def output_stem(path, root_inputs=()) -> str:
    """A file name for one document's Markdown that stays unique across input directories."""
    p = Path(path).resolve()
    for root in map(lambda r: Path(r).resolve(), root_inputs):
        if root.is_dir() and p.is_relative_to(root):
            return "__".join(p.relative_to(root).parts)
    return p.name


def extract_to_dir(paths, outdir, cfg: DocumentConfig, root_inputs=()) -> list[dict]:
    """Write ``OUTDIR/<name>.md`` and ``OUTDIR/<name>.json`` for each document; failures are
    returned (and written to ``OUTDIR/<name>.json``) with their reason, never raised."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        stem = output_stem(path, root_inputs)
        try:
            ex = extract_document(path, cfg)
            (outdir / f"{stem}.md").write_text(ex.markdown, encoding="utf-8")
            row = ex.sidecar(str(path))
        except DocumentError as e:
            row = {"path": str(path), "error": e.reason, "message": str(e)}
        except Exception as e:  # noqa: BLE001  (as in the pipeline: one odd file is reported, the rest go on)
            row = {"path": str(path), "error": "extraction_error", "message": f"{type(e).__name__}: {e}"}
        (outdir / f"{stem}.json").write_text(json.dumps(row, ensure_ascii=False, indent=1), encoding="utf-8")
        rows.append(row)
    return rows


def extract_inputs(inputs, outdir, cfg, progress: bool = True) -> dict:
    """``--extract-only``: every PDF/EPUB/DOCX under ``inputs`` to ``OUTDIR/<name>.md`` + ``.json``,
    in parallel on the local runner's processes; a summary (with each failure's reason) goes to
    ``OUTDIR/extract.json`` and is returned. ``cfg`` is a ``ProcessingConfig``."""
    from intern_jax.data.processing import readers, runner  # noqa: PLC0415
    from intern_jax.data.processing.documents import StageStats  # noqa: PLC0415

    listing = StageStats("extract")
    files = [f for f in readers.list_inputs(inputs, cfg.readers, listing)
             if readers.file_kind(f, cfg.readers) in DOCUMENT_EXTENSIONS.values()]
    if not files:
        raise ValueError(f"no PDF, EPUB or DOCX file under {list(map(str, inputs))}")
    shards = [runner.WorkShard(f"{i:06d}", (f,)) for i, f in enumerate(files)]
    groups = runner.run_tasks(_extract_shard, shards, (str(outdir), cfg.readers.documents, tuple(map(str, inputs))),
                              min(runner.num_workers(cfg), len(shards)), "extract", progress)
    rows = [r for g in groups for r in g]
    summary = {"documents": len(rows), "extracted": sum("error" not in r for r in rows),
               "pages": sum(r.get("pages", 0) for r in rows),
               "ocr_pages": sum(len(r.get("ocr_pages", ())) for r in rows),
               "tables": sum(r.get("tables", 0) for r in rows),
               "seconds": round(sum(r.get("seconds", 0.0) for r in rows), 3),
               "failures": [{"path": r["path"], "reason": r["error"], "message": r["message"]}
                            for r in rows if "error" in r]
               + [{"path": r["path"], **p} for r in rows for p in r.get("unreadable_pages", ())]}
    Path(outdir, "extract.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    return summary


def _extract_shard(shard, outdir: str, cfg: DocumentConfig, roots: tuple[str, ...]) -> list[dict]:
    return extract_to_dir(shard.files, outdir, cfg, roots)
