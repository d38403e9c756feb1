"""DOCX to Markdown with python-docx: body paragraphs and tables in document order.

Headings come from the ``Heading N`` / ``Title`` styles (or a paragraph's outline level), list
items from ``List ...`` styles or numbering properties (``1.`` for numbered styles, ``-``
otherwise), tables become Markdown tables (merged cells repeat their text), ``Caption``
paragraphs and inline pictures are recorded as images. Headers, footers, comments and tracked
deletions are not part of the text. Legacy ``.doc`` and password-protected files (OLE containers)
are refused with a reason.
"""

from __future__ import annotations

import re
import zipfile

from intern_jax.data.processing.config import DocumentConfig
from intern_jax.data.processing.extract import (
    DocumentError,
    Extraction,
    describe_bytes,
    join_lines,
    markdown_table,
    save_image,
)

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
NS = {"a": "http://schemas.openxmlformats.org/drawingml/2006/main", "v": "urn:schemas-microsoft-com:vml",
      "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships"}


def extract_docx(path, cfg: DocumentConfig) -> Extraction:
    import docx  # noqa: PLC0415
    from docx.table import Table  # noqa: PLC0415
    from docx.text.paragraph import Paragraph  # noqa: PLC0415

    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise DocumentError("encrypted", f"{path} is an OLE container, not a DOCX: a password-protected Word file "
                                         "or a legacy .doc; save it as an unprotected .docx")
    from lxml import etree  # noqa: PLC0415

    try:
        d = docx.Document(str(path))
    except (zipfile.BadZipFile, KeyError, ValueError, etree.XMLSyntaxError) as e:
        raise DocumentError("damaged_docx", f"{path} is not a readable DOCX: {describe_bytes(head)} ({e})") from e
    pictures = etree.XPath(".//a:blip/@r:embed | .//v:imagedata/@r:id", namespaces=NS)  # image part ids
    ex = Extraction("", "docx", "python-docx", pages=1)
    blocks: list[tuple[str, str]] = []
    for child in d.element.body.iterchildren():
        if child.tag == W + "p":
            para = Paragraph(child, d)
            kind, text = _paragraph(para)
            for rid in pictures(child):
                part = d.part.related_parts.get(rid)
                data = getattr(part, "blob", b"")
                ext = str(getattr(part, "partname", "")).rsplit(".", 1)[-1]
                ex.images.append({"page": 1, "bbox": None, "caption": "",
                                  "file": save_image(cfg, path, 1, len(ex.images), data, ext)})
            if kind == "caption" and ex.images:
                ex.images[-1]["caption"] = text
                kind = "para"
            elif kind == "caption":
                kind = "para"
            if text:
                blocks.append((kind, text))
        elif child.tag == W + "tbl":
            rows = [[join_lines(c.text.splitlines()) for c in row.cells] for row in Table(child, d).rows]
            rows = [r for r in rows if any(r)]
            if rows:
                blocks.append(("table", markdown_table(rows)))
                ex.tables += 1
    out = ""
    for i, (kind, text) in enumerate(blocks):
        if i:
            out += "\n" if kind == "item" and blocks[i - 1][0] == "item" else "\n\n"
        out += text
    ex.markdown = out + ("\n" if out else "")
    return ex


def _paragraph(para) -> tuple[str, str]:
    text = join_lines(para.text.splitlines())
    if not text:
        return "para", ""
    style = (para.style.name if para.style is not None else "") or ""
    m = re.match(r"(?i)heading\s*(\d)", style)
    level = int(m.group(1)) if m else (1 if style.lower() == "title" else 0)
    if not level:
        outline = para._p.find(f"{W}pPr/{W}outlineLvl")
        if outline is not None and outline.get(W + "val", "9").isdigit() and int(outline.get(W + "val")) < 9:
            level = int(outline.get(W + "val")) + 1
    if level:
        return "heading", "#" * min(level, 6) + " " + text
    if style.lower() == "caption":
        return "caption", text
    numbered = para._p.find(f"{W}pPr/{W}numPr") is not None
    if style.lower().startswith("list") or numbered:
        depth = para._p.find(f"{W}pPr/{W}numPr/{W}ilvl")
        indent = "  " * (int(depth.get(W + "val", "0")) if depth is not None else 0)
        marker = "1." if "number" in style.lower() else "-"
        return "item", f"{indent}{marker} {text}"
    return "para", text
