"""PDF page layout to Markdown: reading order (recursive XY-cut), unruled tables, headings, lists,
code blocks, running headers / footers / page numbers, captions; over plain line and table boxes.

``pdf_reader`` turns PyMuPDF pages into ``PageContent`` (``Line``s with box, font size, bold and
monospace flags; ruled ``Table``s; image boxes; OCR text); everything here is pure Python over
those boxes, so it is tested without a PDF library and works for any producer of boxes.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

from intern_jax.data.processing.extract import join_lines, markdown_table

BULLET_RE = re.compile(r"^[\u2022\u25e6\u25aa\u25ab\u25cf\u25cb\u25a0\u25a1\u2023\u2043\u2219\u00b7*"
                       r"\u2013\u2014-]\s+(.*)$")
NUMBERED_RE = re.compile(r"^(\(?\d{1,3}[.)]|\([a-z]\)|[a-z]\))\s+(.*)$")
PAGE_NUMBER_RE = re.compile(r"^(page\s+)?[-\u2013\u2014\s]*(\d{1,4}|[ivxlcdm]{1,7})"
                            r"([-\u2013\u2014\s]*|\s*(/|of)\s*\d{1,4})$", re.IGNORECASE)
CAPTION_RE = re.compile(r"^(fig\.|figure|table|image|photo|chart|plate|\u56fe|\u8868)\s*[\dA-Za-z\u4e00-\u9fff]",
                        re.IGNORECASE)
MAX_CUT_DEPTH = 200  # deeper XY-cut nesting (thousands of lines on a page) reads the rest top to bottom
BAND = 0.1  # top and bottom tenth of a page: where running headers, footers and page numbers live


@dataclass
class Line:
    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    size: float
    bold: bool = False
    mono: bool = False  # all in a monospaced font: a code line, kept as it is

    @property
    def bbox(self):
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass
class Table:
    x0: float
    y0: float
    x1: float
    y1: float
    rows: list[list[str]]


@dataclass
class PageContent:
    number: int  # 1-based
    height: float
    lines: list[Line] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    ocr_text: str | None = None  # set for OCR'd pages


# ---- running headers, footers, page numbers ---------------------------------------------------------


def _furniture_key(text: str) -> str:
    return re.sub(r"\d+", "#", " ".join(text.lower().split()))


def _band_lines(p: PageContent) -> list[str]:
    if p.ocr_text is not None:
        lines = [ln.strip() for ln in p.ocr_text.splitlines() if ln.strip()]
        return lines[:2] + lines[-2:]
    return [ln.text for ln in p.lines if ln.y1 < BAND * p.height or ln.y0 > (1 - BAND) * p.height]


def furniture_keys(pages: list[PageContent]) -> set[str]:
    """Keys of lines in the top/bottom band that repeat on at least 2 pages and 40% of them
    (digits folded, so "Page 3" and "Page 4" repeat)."""
    counts = collections.Counter()
    for p in pages:
        counts.update({_furniture_key(t) for t in _band_lines(p)})
    need = max(2, 0.4 * len(pages))
    return {k for k, n in counts.items() if n >= need}


def _is_furniture(text: str, keys: set[str]) -> bool:
    return _furniture_key(text) in keys or bool(PAGE_NUMBER_RE.match(text.strip()))


# ---- reading order and Markdown ---------------------------------------------------------------------


def _split(items, lo, hi, min_gap: float, widest_only: bool):
    """Split boxes into runs separated along one axis by empty gaps of at least ``min_gap``."""
    items = sorted(items, key=lo)
    runs, gaps, end = [[items[0]]], [], hi(items[0])
    for it in items[1:]:
        if lo(it) - end >= min_gap:
            gaps.append(lo(it) - end)
            runs.append([it])
        else:
            runs[-1].append(it)
        end = max(end, hi(it))
    if widest_only and len(runs) > 2:  # cut only at the widest gaps: a title's, not a paragraph's
        widest, out = max(gaps), [runs[0]]
        for gap, run in zip(gaps, runs[1:]):
            if gap >= widest - 1:
                out.append(run)
            else:
                out[-1] = out[-1] + run
        runs = out
    return runs


def aligned_table(cols: list[list]) -> Table | None:
    """Columns that are really an unruled table: most lines of every column sit on a baseline shared
    with another column, and some column is ragged (cells, not justified prose). Rows are the shared
    baselines; a row with an empty first cell continues the row above (a wrapped cell)."""
    if any(not isinstance(it, Line) for c in cols for it in c):
        return None
    col_of = {id(ln): i for i, c in enumerate(cols) for ln in c}
    rows: list[list[Line]] = []
    for ln in sorted((ln for c in cols for ln in c), key=lambda ln: ln.y1):
        if rows and abs(rows[-1][-1].y1 - ln.y1) < 0.4 * ln.size:
            rows[-1].append(ln)
        else:
            rows.append([ln])
    shared = {id(ln) for r in rows if len({col_of[id(x)] for x in r}) > 1 for ln in r}
    if sum(1 for r in rows if len({col_of[id(x)] for x in r}) > 1) < 2:
        return None
    if any(sum(id(ln) in shared for ln in c) < 0.6 * len(c) for c in cols):
        return None
    width = lambda c: max(ln.x1 for ln in c) - min(ln.x0 for ln in c)
    ragged = any(sorted(ln.x1 - ln.x0 for ln in c)[len(c) // 2] < 0.6 * width(c) for c in cols if len(c) > 1)
    if not ragged:
        return None
    cells: list[list[str]] = []
    for r in rows:
        row = [""] * len(cols)
        for ln in sorted(r, key=lambda ln: ln.x0):
            row[col_of[id(ln)]] = (row[col_of[id(ln)]] + " " + ln.text).strip()
        if cells and not row[0]:
            cells[-1] = [join_lines([a, b]) for a, b in zip(cells[-1], row)]
        else:
            cells.append(row)
    items = [ln for c in cols for ln in c]
    return Table(min(ln.x0 for ln in items), min(ln.y0 for ln in items), max(ln.x1 for ln in items),
                 max(ln.y1 for ln in items), cells)


def reading_order(items, col_gap: float, row_gap: float, depth: int = 0) -> list[list]:
    """Recursive XY-cut over boxes (``x0 y0 x1 y1`` attributes): split into columns where a vertical
    gap runs the whole height, else at the widest horizontal gap; leaves top to bottom."""
    if len(items) <= 1 or depth > MAX_CUT_DEPTH:
        return [sorted(items, key=lambda b: (b.y0, b.x0))] if items else []
    cols = _split(items, lambda b: b.x0, lambda b: b.x1, col_gap, False)
    if len(cols) > 1:
        table = aligned_table(cols)
        if table is not None:
            return [[table]]
        return [leaf for c in cols for leaf in reading_order(c, col_gap, row_gap, depth + 1)]
    rows = _split(items, lambda b: b.y0, lambda b: b.y1, row_gap, True)
    if len(rows) > 1:
        return [leaf for r in rows for leaf in reading_order(r, col_gap, row_gap, depth + 1)]
    return [sorted(items, key=lambda b: (b.y0, b.x0))]


def _blocks_of(leaf: list, body: float, heading_sizes: list[float]) -> list[tuple[str, str, tuple]]:
    """(kind, markdown, bbox) paragraphs of one reading-order leaf: heading, item, para or table."""
    out, para, kind = [], [], "para"

    def flush():
        nonlocal para
        if para and kind == "code":
            left, width = min(ln.x0 for ln in para), 0.6 * para[0].size  # monospace advance ~0.6 em
            body_lines = [" " * round((ln.x0 - left) / width) + ln.text for ln in para]
            out.append(("code", "```\n" + "\n".join(body_lines) + "\n```", para[0].bbox))
        elif para:
            text = join_lines(ln.text for ln in para)
            if kind == "para" and (level := _heading_level(para, body, heading_sizes)):
                out.append(("heading", "#" * level + " " + text, para[0].bbox))
            else:
                out.append((kind, text, para[0].bbox))
        para = []

    for it in leaf:
        if isinstance(it, Table):
            flush()
            out.append(("table", markdown_table(it.rows), (it.x0, it.y0, it.x1, it.y1)))
            continue
        marker = None if it.mono else BULLET_RE.match(it.text) or NUMBERED_RE.match(it.text)
        prev = para[-1] if para else None
        if prev is not None and prev.mono and it.mono and it.y0 - prev.y1 < 1.5 * it.size:
            para.append(it)  # code keeps its lines (and blank lines between them)
            continue
        new = (prev is None or marker or abs(prev.size - it.size) > 0.6 or prev.bold != it.bold
               or prev.mono != it.mono or it.y0 - prev.y1 > 0.6 * it.size
               or (kind == "item" and it.x0 < para[0].x0 + 2))
        if new:
            flush()
            kind = "code" if it.mono else "item" if marker else "para"
            if marker:
                num = marker.group(1)
                it = Line(it.x0, it.y0, it.x1, it.y1, (f"{num} " if NUMBERED_RE.match(it.text)
                                                        and num[0].isdigit() else "- ") + marker.group(
                    marker.lastindex), it.size, it.bold)
        para.append(it)
    flush()
    return out


def _heading_level(para: list[Line], body: float, heading_sizes: list[float]) -> int:
    size = min(ln.size for ln in para)
    if not _heading_like(" ".join(ln.text for ln in para)) or len(para) > 3:
        return 0
    if size >= body * 1.15 and heading_sizes:
        return 1 + min(range(len(heading_sizes)), key=lambda i: abs(heading_sizes[i] - size))
    if all(ln.bold for ln in para):
        return min(len(heading_sizes) + 1, 6)
    return 0


def _heading_like(text: str) -> bool:
    """Short, and not ending like a sentence or clause."""
    return len(text.split()) <= 20 and len(text) <= 120 and not text.rstrip().endswith(
        (".", ":", ",", ";", "!", "?", "\u3002", "\uff0c", "\uff1b", "\uff1a", "\uff01", "\uff1f"))


def body_and_heading_sizes(pages: list[PageContent]) -> tuple[float, list[float]]:
    weights, short = collections.Counter(), set()
    for p in pages:
        for ln in p.lines:
            weights[ln.size] += len(ln.text)
            if _heading_like(ln.text):
                short.add(ln.size)
    if not weights:
        return 10.0, []
    body = weights.most_common(1)[0][0]
    sizes = sorted({round(s * 2) / 2 for s in short if s >= body * 1.15}, reverse=True)
    return body, sizes[:5]


def page_markdown(p: PageContent, keys: set[str], body: float, heading_sizes: list[float]) -> tuple[list, int]:
    """(kind, text, bbox) blocks of one page in reading order, and how many furniture lines were removed."""
    if p.ocr_text is not None:
        lines = p.ocr_text.splitlines()
        nonempty = [i for i, ln in enumerate(lines) if ln.strip()]
        removed = [i for i in dict.fromkeys(nonempty[:2] + nonempty[-2:]) if _is_furniture(lines[i], keys)]
        for i in removed:
            lines[i] = ""
        paras = re.split(r"\n\s*\n", "\n".join(lines))
        return [("para", join_lines(t.splitlines()), (0, 0, 0, 0)) for t in paras if t.strip()], len(removed)
    lines = [ln for ln in p.lines if not ((ln.y1 < BAND * p.height or ln.y0 > (1 - BAND) * p.height)
                                          and _is_furniture(ln.text, keys))]
    items = lines + p.tables
    blocks = []
    for leaf in reading_order(items, col_gap=max(6.0, 1.0 * body), row_gap=0.6 * body):
        blocks += _blocks_of(leaf, body, heading_sizes)
    return blocks, len(p.lines) - len(lines)


def assemble(blocks: list[tuple]) -> str:
    """Markdown from (kind, text, bbox) blocks; a paragraph ending in a hyphenated word continues
    into the next one when that starts in lower case (a column or page break inside a word)."""
    parts: list[tuple[str, str]] = []
    for kind, text, _ in blocks:
        if (parts and kind == "para" and parts[-1][0] == "para" and re.search(r"[^\W\d_]-$", parts[-1][1])
                and text[:1].islower()):
            parts[-1] = ("para", join_lines([parts[-1][1], text]))
            continue
        parts.append((kind, text))
    out = ""
    for i, (kind, text) in enumerate(parts):
        if i:
            out += "\n" if kind == "item" and parts[i - 1][0] == "item" else "\n\n"
        out += text
    return out + "\n" if out else ""


def image_captions(p: PageContent, blocks: list[tuple]) -> list[str]:
    """Caption of each image: the paragraph just below it (or above it) that reads like one."""
    out = []
    for im in p.images:
        x0, y0, x1, y1 = im["bbox"]
        best = ""
        for kind, text, (bx0, by0, bx1, by1) in blocks:
            overlaps = bx0 < x1 and bx1 > x0
            below, above = 0 <= by0 - y1 <= 40, 0 <= y0 - by1 <= 40
            if kind in ("para", "item") and overlaps and (below or above) and CAPTION_RE.match(text):
                best = text
                break
        out.append(best)
    return out
