"""PDF to Markdown: reading order, headings, lists, ruled tables, captions, running headers removed, OCR.

Built on PyMuPDF's span geometry (``page.get_text("dict")``, ``get_drawings``, ``get_image_info``,
page rendering); this module reads pages into boxes, ``pdf_layout`` turns boxes into Markdown:
lines are put in reading order by a recursive XY-cut (columns first, then the
widest horizontal gap), headings come from font size against the body size, lists from their
markers, ruled tables from the page's line drawings (cells = the grid's cells, filled with the
words inside them), unruled tables from columns whose lines share baselines, monospaced lines as
fenced code blocks (alignment kept), lines that repeat at the top or bottom of most pages and page numbers are
removed, words hyphenated across a line end are made whole. Pages without a usable text layer
are rendered and OCR'd (``ocr``). Formulas stay text; OCR'd pages become plain paragraphs.

Why PyMuPDF, measured on this repository's generated papers (``scripts/bench/data.py``), 2 cores:
pypdf 7.1 (BSD) ~250 pages/s but follows the content stream (interleaved columns come out mixed,
CER 0.71), no tables, headings or furniture removal; pdfplumber 0.11 (MIT) has char boxes and
tables but is pure Python over pdfminer, 20-30 pages/s before any layout work; pymupdf4llm 2.0
with its bundled layout model (``pdf_backend=pymupdf4llm``) reads these pages right but at 1-2.5
pages/s (an ONNX model per page), its model-free mode mixes interleaved columns, and PyMuPDF 2.0's
``find_tables`` costs 0.5-1 s per page. PyMuPDF's span dict costs ~1.5 ms per page, so this layout
on top of it runs at pypdf's speed (docs/benchmarks.md). MuPDF also renders pages for OCR and
opens damaged files. Licence: PyMuPDF is AGPL-3.0 (or Artifex's commercial licence);
using it in a service that others reach over a network carries the AGPL's source obligations.
``pdf_backend=mineru`` calls MinerU's CLI where it and its models are installed (not here).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

from intern_jax.data.processing.config import DocumentConfig
from intern_jax.data.processing.extract import DocumentError, Extraction, describe_bytes, join_lines, save_image
from intern_jax.data.processing.pdf_layout import (
    Line,
    PageContent,
    Table,
    assemble,
    body_and_heading_sizes,
    furniture_keys,
    image_captions,
    page_markdown,
)

MONO_FONT_RE = re.compile(r"mono|nimbusmon|courier|typewriter|consol|menlo|\bcode|cmtt|inconsolata", re.IGNORECASE)
MAX_RULE_PAIRS = 250_000  # more horizontal x vertical rules than this on a page: a vector figure, not tables

# ---- opening -------------------------------------------------------------------------------------


def open_pdf(path):
    """A PyMuPDF document, or ``DocumentError`` naming what is wrong with the file."""
    import pymupdf  # noqa: PLC0415

    with open(path, "rb") as f:
        head = f.read(1024)
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 2048))
        tail = f.read()
    if b"%PDF-" not in head:
        raise DocumentError("not_a_pdf", f"{path} is not a PDF: {describe_bytes(head)}")
    if b"%%EOF" not in tail:
        raise DocumentError("truncated", f"{path} is truncated (no %%EOF at its end; an interrupted download?); "
                                         "fetch it again")
    try:
        doc = pymupdf.open(str(path), filetype="pdf")
    except Exception as e:  # noqa: BLE001  (MuPDF raises several types for damaged files)
        raise DocumentError("damaged_pdf", f"{path} cannot be opened as a PDF: {e}") from e
    if doc.needs_pass and not doc.authenticate(""):
        doc.close()
        raise DocumentError("encrypted", f"{path} is encrypted with a password; decrypt it first "
                                         "(e.g. qpdf --decrypt --password=... in.pdf out.pdf)")
    if doc.page_count == 0:
        doc.close()
        raise DocumentError("no_pages", f"{path} has no pages")
    return doc


def extract_pdf(path, cfg: DocumentConfig) -> Extraction:
    if cfg.pdf_backend == "mineru":
        return _extract_mineru(path, cfg)
    doc = open_pdf(path)
    try:
        if cfg.pdf_backend == "pymupdf4llm":
            return _extract_pymupdf4llm(doc, cfg)
        return _extract_pymupdf(path, doc, cfg)
    finally:
        doc.close()


# ---- one page's content -------------------------------------------------------------------------------


def page_lines(page) -> list[Line]:
    """Text lines with their box, font size and boldness; fragments on one baseline merged."""
    import pymupdf  # noqa: PLC0415

    d = page.get_text("dict", flags=pymupdf.TEXTFLAGS_DICT & ~pymupdf.TEXT_PRESERVE_IMAGES)
    lines = []
    for block in d["blocks"]:
        for ln in block.get("lines", ()):
            spans = [s for s in ln["spans"] if s["text"]]
            text = "".join(s["text"] for s in spans).strip()
            if not text:
                continue
            weights = collections.Counter()
            for s in spans:
                weights[round(s["size"], 1)] += len(s["text"].strip())
            visible = [s for s in spans if s["text"].strip()]
            bold = all((s["flags"] & 16) or "bold" in s["font"].lower() for s in visible)
            mono = all((s["flags"] & 8) or MONO_FONT_RE.search(s["font"]) for s in visible)
            x0, y0, x1, y1 = ln["bbox"]
            text = "".join(s["text"] for s in spans).rstrip() if mono else text
            lines.append(Line(x0, y0, x1, y1, text, weights.most_common(1)[0][0], bold, mono))
    lines.sort(key=lambda ln: (round(ln.y1), ln.x0))
    merged: list[Line] = []
    for ln in lines:
        prev = merged[-1] if merged else None
        gap = ln.x0 - prev.x1 if prev else -1.0
        code = prev is not None and prev.mono and ln.mono and gap < 0.4 * page.rect.width  # aligned code columns
        if (prev and abs(prev.y1 - ln.y1) < 0.3 * ln.size and abs(prev.size - ln.size) < 0.5
                and (0 <= gap < 1.0 * ln.size or code and gap >= 0)):
            space = " " * max(1, round(gap / (0.6 * ln.size))) if code else "" if gap < 0.15 * ln.size else " "
            merged[-1] = Line(prev.x0, min(prev.y0, ln.y0), ln.x1, max(prev.y1, ln.y1), prev.text + space + ln.text,
                              prev.size, prev.bold and ln.bold, prev.mono and ln.mono)
        else:
            merged.append(ln)
    return merged


def _segments(page):
    """Horizontal ``(x0, x1, y)`` and vertical ``(x, y0, y1)`` rules drawn on the page."""
    h, v = [], []
    for d in page.get_drawings():
        for item in d["items"]:
            if item[0] == "l":
                p, q = item[1], item[2]
                if abs(p.y - q.y) < 1 and abs(p.x - q.x) > 3:
                    h.append((min(p.x, q.x), max(p.x, q.x), (p.y + q.y) / 2))
                elif abs(p.x - q.x) < 1 and abs(p.y - q.y) > 3:
                    v.append(((p.x + q.x) / 2, min(p.y, q.y), max(p.y, q.y)))
            elif item[0] == "re":
                r = item[1]
                if r.height < 3 and r.width > 3:
                    h.append((r.x0, r.x1, (r.y0 + r.y1) / 2))
                elif r.width < 3 and r.height > 3:
                    v.append(((r.x0 + r.x1) / 2, r.y0, r.y1))
                elif r.width > 3 and r.height > 3 and "s" in (d.get("type") or ""):  # stroked box: four rules
                    h += [(r.x0, r.x1, r.y0), (r.x0, r.x1, r.y1)]
                    v += [(r.x0, r.y0, r.y1), (r.x1, r.y0, r.y1)]
    return h, v


def _cluster(values, tol: float = 2.0) -> list[float]:
    out: list[float] = []
    for x in sorted(values):
        if not out or x - out[-1] > tol:
            out.append(x)
    return out


def find_tables(page) -> list[Table]:
    """Ruled tables: connected groups of horizontal and vertical rules forming at least a 2x2 grid,
    each cell filled with the words whose centre lies in it."""
    h, v = _segments(page)
    if len(h) < 2 or len(v) < 2 or len(h) * len(v) > MAX_RULE_PAIRS:  # no grid, or a vector drawing
        return []
    segs = [("h", s) for s in h] + [("v", s) for s in v]
    parent = list(range(len(segs)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tol = 2.0
    for i, (ki, si) in enumerate(segs):
        if ki != "h":
            continue
        for j, (kj, sj) in enumerate(segs):
            if kj == "v" and si[0] - tol <= sj[0] <= si[1] + tol and sj[1] - tol <= si[2] <= sj[2] + tol:
                parent[find(i)] = find(j)
    groups = collections.defaultdict(list)
    for i, seg in enumerate(segs):
        groups[find(i)].append(seg)
    words = page.get_text("words")
    tables = []
    for group in groups.values():
        xs = _cluster([s[0] for k, s in group if k == "v"])
        ys = _cluster([s[2] for k, s in group if k == "h"])
        if len(xs) < 3 and len(ys) < 3 or len(xs) < 2 or len(ys) < 2:
            continue
        cells = [[[] for _ in range(len(xs) - 1)] for _ in range(len(ys) - 1)]
        for w in words:
            cx, cy = (w[0] + w[2]) / 2, (w[1] + w[3]) / 2
            if xs[0] < cx < xs[-1] and ys[0] < cy < ys[-1]:
                c = max(i for i, x in enumerate(xs[:-1]) if x <= cx)
                r = max(i for i, y in enumerate(ys[:-1]) if y <= cy)
                cells[r][c].append(w)
        rows = [[_cell_text(c) for c in row] for row in cells]
        rows = [r for r in rows if any(r)]
        if len(rows) >= 1 and sum(1 for r in rows for c in r if c) >= 2:
            tables.append(Table(xs[0], ys[0], xs[-1], ys[-1], rows))
    return tables


def _cell_text(words) -> str:
    lines = collections.defaultdict(list)
    for w in sorted(words, key=lambda w: (round(w[3] / 3), w[0])):
        lines[round(w[3] / 3)].append(w[4])
    return join_lines(" ".join(ws) for _, ws in sorted(lines.items()))


def _broken_text(text: str) -> bool:
    """Text layers of bad producers: mostly replacement characters, private-use glyph codes or controls."""
    chars = [c for c in text if not c.isspace()]
    bad = sum(1 for c in chars if c == "\ufffd" or "\ue000" <= c <= "\uf8ff" or ord(c) < 32)
    return bool(chars) and bad > 0.3 * len(chars)


def read_page(page, number: int, cfg: DocumentConfig) -> PageContent:
    content = PageContent(number, page.rect.height)
    lines = page_lines(page)
    images = [im for im in page.get_image_info(xrefs=True)
              if min(im["bbox"][2] - im["bbox"][0], im["bbox"][3] - im["bbox"][1]) >= cfg.min_image_points]
    text = "".join(ln.text for ln in lines)
    needs_ocr = cfg.ocr == "force" or (cfg.ocr == "auto" and (_broken_text(text) or (not text.strip() and images)))
    if needs_ocr:
        content.ocr_text = ocr_page(page, cfg)
        return content
    content.tables = find_tables(page) if lines else []
    in_table = lambda ln: any(t.x0 <= (ln.x0 + ln.x1) / 2 <= t.x1 and t.y0 <= (ln.y0 + ln.y1) / 2 <= t.y1
                              for t in content.tables)
    content.lines = [ln for ln in lines if not in_table(ln)]
    content.images = [{"bbox": tuple(round(v, 1) for v in im["bbox"]), "xref": im.get("xref", 0)} for im in images]
    return content


def ocr_page(page, cfg: DocumentConfig) -> str:
    import pymupdf  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from intern_jax.data.processing import ocr  # noqa: PLC0415

    problem = ocr.ocr_problem(cfg.ocr_languages)
    if problem:
        raise DocumentError("ocr_unavailable", f"page needs OCR but {problem}")
    pix = page.get_pixmap(dpi=cfg.ocr_dpi, colorspace=pymupdf.csGRAY)
    image = Image.frombytes("L", (pix.width, pix.height), pix.samples)
    return ocr.ocr_image(image, cfg.ocr_languages)


def _extract_pymupdf(path, doc, cfg: DocumentConfig) -> Extraction:
    ex = Extraction("", "pdf", "pymupdf", pages=doc.page_count)
    pages: list[PageContent] = []
    for i in range(doc.page_count):
        try:
            pages.append(read_page(doc[i], i + 1, cfg))
        except DocumentError as e:
            ex.unreadable_pages.append({"page": i + 1, "reason": e.reason, "message": str(e)})
        except Exception as e:  # noqa: BLE001  (a damaged page must not lose the document)
            ex.unreadable_pages.append({"page": i + 1, "reason": "damaged_page", "message": f"{type(e).__name__}: {e}"})
    keys = furniture_keys(pages)
    body, heading_sizes = body_and_heading_sizes(pages)
    blocks_all = []
    for p in pages:
        try:
            blocks, removed = page_markdown(p, keys, body, heading_sizes)
        except Exception as e:  # noqa: BLE001  (a page whose layout defeats us must not lose the document)
            ex.unreadable_pages.append({"page": p.number, "reason": "layout_error",
                                        "message": f"{type(e).__name__}: {e}"})
            continue
        ex.removed_lines += removed
        if p.ocr_text is not None:
            ex.ocr_pages.append(p.number)
        ex.tables += sum(1 for b in blocks if b[0] == "table")  # ruled and unruled
        for im, caption in zip(p.images, image_captions(p, blocks)):
            ex.images.append({"page": p.number, "bbox": list(im["bbox"]), "caption": caption,
                              "file": _save_image(doc, path, p.number, im, cfg, len(ex.images))})
        blocks_all += blocks
        ex.page_texts.append(assemble(blocks))
    ex.markdown = assemble(blocks_all)
    return ex


def _save_image(doc, path, page: int, im: dict, cfg: DocumentConfig, index: int) -> str:
    if not cfg.image_dir or not im.get("xref"):
        return ""
    data = doc.extract_image(im["xref"]) or {}
    return save_image(cfg, path, page, index, data.get("image", b""), data.get("ext", "bin"))


# ---- other backends --------------------------------------------------------------------------------


def _extract_pymupdf4llm(doc, cfg: DocumentConfig) -> Extraction:
    import pymupdf4llm  # noqa: PLC0415

    chunks = pymupdf4llm.to_markdown(doc, page_chunks=True, header=False, footer=False,
                                     ocr_language=cfg.ocr_languages, ocr_dpi=cfg.ocr_dpi, show_progress=False)
    md = "\n\n".join(c["text"].strip() for c in chunks if c["text"].strip())
    tables = len(re.findall(r"^\|(?:\s*:?-+:?\s*\|)+\s*$", md, flags=re.MULTILINE))
    return Extraction(md + "\n", "pdf", "pymupdf4llm", pages=doc.page_count, tables=tables)


def _extract_mineru(path, cfg: DocumentConfig) -> Extraction:
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    open_pdf(path).close()  # the same checks and reasons as the default backend
    exe = shutil.which("mineru")
    if not exe:
        raise DocumentError("backend_unavailable", "pdf_backend=mineru but the mineru command is not installed "
                                                   "(pip install mineru, then fetch its models)")
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run([exe, "-p", str(path), "-o", tmp], capture_output=True, text=True)
        found = sorted(Path(tmp).rglob("*.md"))
        if run.returncode != 0 or not found:
            raise DocumentError("backend_failed", f"mineru failed on {path}: {(run.stderr or '').strip()[-500:]}")
        md = found[0].read_text(encoding="utf-8")
    return Extraction(md, "pdf", "mineru", pages=0, tables=md.count("<table"))

