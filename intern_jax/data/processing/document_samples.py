"""Synthetic PDF, EPUB and DOCX documents with known text, for the document readers' tests and benchmark.

Each writer lays out a document whose reading-order text is known exactly (two columns, a table,
a bulleted list, a hyphenated line end, a running header and page number, an image with a
caption, Chinese text), so extraction can be checked cell by cell and scored by character error
rate. ``rasterise_pdf`` turns any PDF into a scanned one (page images, no text layer). Needs
``reportlab``, ``ebooklib`` and ``python-docx`` (the ``dev`` extra); nothing here is used by the
pipeline itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

HEADER = "Proceedings of Synthetic Documents"
VOCAB = ("river mountain people history garden machine language music winter station between quickly because "
         "another without morning science window letter market bridge forest travel simple measure careful "
         "reading column paper number result method sample little follow change public").split()
HYPHENATED = ("extraor", "dinary")  # split across a line end in column one: must come out as "extraordinary"
TABLE = [["Metal", "Density", "Melting point"],
         ["Iron", "7.87", "1538"],
         ["Copper", "8.96", "1085"],
         ["Gold", "19.32", "1064"]]  # 4 rows x 3 columns, header first
LIST_ITEMS = ["Readers keep headings and lists", "Tables become Markdown tables", "Scanned pages go through OCR"]
CAPTION = "Figure 1: A red square drawn as an image."
CHINESE = ("北京是中国的首都，也是全国的政治中心和文化中心。这座城市有三千多年的历史，保存着大量古代建筑，"
           "例如故宫和天坛。每年都有很多游客来这里参观学习。")
CHINESE_HEADING = "中文章节"


@dataclass
class SamplePdf:
    path: Path
    pages: list[str] = field(default_factory=list)  # reading-order text per page (no header, footer, Markdown)
    column_one: str = ""
    column_two: str = ""


def prose(rng: random.Random, words: int) -> str:
    """Sentences of random vocabulary words (deterministic for a seeded ``rng``)."""
    out, sentence = [], []
    for _ in range(words):
        sentence.append(rng.choice(VOCAB))
        if len(sentence) >= rng.randint(8, 14):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def _page_furniture(c, number: int, width: float, height: float) -> None:
    c.setFont("Helvetica-Oblique", 8)
    c.drawCentredString(width / 2, height - 30, HEADER)
    c.setFont("Helvetica", 9)
    c.drawCentredString(width / 2, 28, str(number))


def write_article_pdf(path, *, seed: int = 0, row_major: bool = False, chinese: bool = True) -> SamplePdf:
    """Page 1: title + two columns (one word hyphenated across a line end); page 2: heading, a 4x3
    ruled table, a bulleted list and an image with its caption; page 3 (``chinese``): a Chinese section.
    Every page carries the running header and its page number. ``row_major`` draws the two columns'
    lines interleaved (left line, right line, ...), as some generators write them."""
    from reportlab.lib.pagesizes import A4  # noqa: PLC0415
    from reportlab.lib.utils import simpleSplit  # noqa: PLC0415
    from reportlab.pdfbase import pdfmetrics  # noqa: PLC0415
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont  # noqa: PLC0415
    from reportlab.pdfgen import canvas  # noqa: PLC0415

    rng = random.Random(seed)
    path = Path(path)
    width, height = A4
    c = canvas.Canvas(str(path), pagesize=A4)
    sample = SamplePdf(path)

    # page 1: two columns
    _page_furniture(c, 1, width, height)
    title = "Layout Extraction " + rng.choice(VOCAB).capitalize()
    c.setFont("Helvetica-Bold", 18)
    c.drawString(56, height - 80, title)
    col_w, size, lead = (width - 56 * 2 - 24) / 2, 10, 13
    left_lines = simpleSplit(prose(rng, 110), "Helvetica", size, col_w - 40)
    k = min(3, len(left_lines) - 2)
    left_lines[k] += " " + HYPHENATED[0] + "-"
    left_lines[k + 1] = HYPHENATED[1] + " " + left_lines[k + 1]
    right_lines = simpleSplit(prose(rng, 110), "Helvetica", size, col_w - 10)
    top = height - 115
    c.setFont("Helvetica", size)
    placed = [(56, top - i * lead, t) for i, t in enumerate(left_lines)]
    right = [(56 + col_w + 24, top - i * lead, t) for i, t in enumerate(right_lines)]
    if row_major:
        placed = [p for pair in zip(placed, right) for p in pair] + placed[len(right):] + right[len(placed):]
    else:
        placed += right
    for x, y, t in placed:
        c.drawString(x, y, t)
    sample.column_one = " ".join(left_lines).replace(HYPHENATED[0] + "- " + HYPHENATED[1], "".join(HYPHENATED))
    sample.column_two = " ".join(right_lines)
    sample.pages.append(" ".join([title, sample.column_one, sample.column_two]))
    c.showPage()

    # page 2: heading, paragraph, table, list, image + caption
    _page_furniture(c, 2, width, height)
    y = height - 80
    c.setFont("Helvetica-Bold", 14)
    c.drawString(56, y, "Results")
    para_lines = simpleSplit(prose(rng, 60), "Helvetica", size, width - 112)
    c.setFont("Helvetica", size)
    for line in para_lines:
        y -= lead
        c.drawString(56, y, line)
    y -= 30
    col_x, row_h = [56, 196, 336, 476], 20
    c.setLineWidth(0.8)
    for r, row in enumerate(TABLE):
        c.setFont("Helvetica-Bold" if r == 0 else "Helvetica", size)
        for j, cell in enumerate(row):
            c.drawString(col_x[j] + 6, y - r * row_h - 14, cell)
    for r in range(len(TABLE) + 1):
        c.line(col_x[0], y - r * row_h, col_x[-1], y - r * row_h)
    for x in col_x:
        c.line(x, y, x, y - len(TABLE) * row_h)
    y -= len(TABLE) * row_h + 30
    c.setFont("Helvetica", size)
    for item in LIST_ITEMS:
        c.drawString(64, y, "\u2022")
        c.drawString(76, y, item)
        y -= lead + 2
    y -= 90
    c.drawImage(_red_square_png(), 56, y, 80, 80)
    c.setFont("Helvetica-Oblique", 9)
    c.drawString(56, y - 14, CAPTION)
    table_text = " ".join(" ".join(row) for row in TABLE)
    sample.pages.append(" ".join(["Results", " ".join(para_lines), table_text, " ".join(LIST_ITEMS), CAPTION]))
    c.showPage()

    if chinese:
        pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
        _page_furniture(c, 3, width, height)
        c.setFont("STSong-Light", 16)
        c.drawString(56, height - 80, CHINESE_HEADING)
        c.setFont("STSong-Light", 12)
        lines = [CHINESE[i:i + 36] for i in range(0, len(CHINESE), 36)]
        for i, line in enumerate(lines):
            c.drawString(56, height - 110 - i * 18, line)
        sample.pages.append(CHINESE_HEADING + " " + CHINESE)
        c.showPage()
    c.save()
    return sample


def _red_square_png():
    from reportlab.lib.utils import ImageReader  # noqa: PLC0415

    return ImageReader(_png_stream())


def _png_stream():
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (220, 30, 30)).save(buf, format="PNG")
    buf.seek(0)
    return buf


def rasterise_pdf(src, dst, *, dpi: int = 150, pages=None) -> Path:
    """A scanned copy of ``src``: each page (or the listed ones) as a grey image, no text layer."""
    import pymupdf  # noqa: PLC0415

    with pymupdf.open(str(src)) as doc, pymupdf.open() as out:
        for i in pages if pages is not None else range(doc.page_count):
            page = doc[i]
            pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
            new = out.new_page(width=page.rect.width, height=page.rect.height)
            new.insert_image(new.rect, stream=pix.tobytes("png"))
        out.save(str(dst), garbage=3, deflate=True)
    return Path(dst)


def write_encrypted_pdf(src, dst, password: str = "secret") -> Path:
    import pymupdf  # noqa: PLC0415

    with pymupdf.open(str(src)) as doc:
        doc.save(str(dst), encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=password, owner_pw=password + "!")
    return Path(dst)


def write_docx(path) -> Path:
    """Heading, two paragraphs, a bulleted list, the 4x3 table and a picture with its caption."""
    import docx  # noqa: PLC0415

    d = docx.Document()
    d.add_heading("Document Title", level=1)
    d.add_paragraph("The first paragraph explains what the document is about and why it matters.")
    d.add_heading("Section Two", level=2)
    d.add_paragraph("A second paragraph follows the section heading with more plain prose.")
    for item in LIST_ITEMS:
        d.add_paragraph(item, style="List Bullet")
    table = d.add_table(rows=len(TABLE), cols=len(TABLE[0]))
    for r, row in enumerate(TABLE):
        for j, cell in enumerate(row):
            table.cell(r, j).text = cell
    d.add_picture(_png_stream())
    d.add_paragraph(CAPTION, style="Caption")
    d.add_paragraph(CHINESE)
    d.save(str(path))
    return Path(path)


def write_epub(path) -> Path:
    """Two chapters: a heading with paragraphs and a list, then the 4x3 table, a figure with its
    caption and Chinese text."""
    from ebooklib import epub  # noqa: PLC0415

    book = epub.EpubBook()
    book.set_identifier("sample-0001")
    book.set_title("Sample Book")
    book.set_language("en")
    items = "".join(f"<li>{t}</li>" for t in LIST_ITEMS)
    rows = "".join("<tr>" + "".join(f"<{'th' if r == 0 else 'td'}>{c}</{'th' if r == 0 else 'td'}>" for c in row)
                   + "</tr>" for r, row in enumerate(TABLE))
    chapters = [
        ("chap1.xhtml", "Chapter One", f"<h1>Chapter One</h1><p>The opening paragraph of the book sets the "
         f"scene in a quiet town.</p><ul>{items}</ul>"),
        ("chap2.xhtml", "Chapter Two", f"<h1>Chapter Two</h1><table>{rows}</table><figure>"
         f'<img src="red.png" alt="a red square"/><figcaption>{CAPTION}</figcaption></figure><p>{CHINESE}</p>'),
    ]
    book.add_item(epub.EpubItem(uid="red", file_name="red.png", media_type="image/png",
                                content=_png_stream().getvalue()))
    spine = []
    for name, title, body in chapters:
        ch = epub.EpubHtml(title=title, file_name=name, lang="en")
        ch.content = f"<html><head><title>{title}</title></head><body>{body}</body></html>"
        book.add_item(ch)
        spine.append(ch)
    book.toc = spine
    book.spine = ["nav", *spine]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    epub.write_epub(str(path), book)
    return Path(path)
