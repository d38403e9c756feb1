"""EPUB to Markdown: the spine's XHTML documents in order, through a small lxml HTML-to-Markdown walk.

An EPUB is a ZIP (``META-INF/container.xml`` -> OPF package -> manifest + spine), read here with
``zipfile`` and ``lxml`` only. Headings, paragraphs, lists, tables (as Markdown tables), block
quotes and preformatted text are kept; images are recorded with their ``alt`` text or
``figcaption``. DRM-protected books (``META-INF/encryption.xml`` over content) are refused with
reason ``encrypted``; navigation documents are skipped; styles and scripts are dropped.
"""

from __future__ import annotations

import posixpath
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

OPF_NS = {"c": "urn:oasis:names:tc:opendocument:xmlns:container", "o": "http://www.idpf.org/2007/opf"}
BLOCK_TAGS = {"p", "div", "section", "article", "header", "footer", "aside", "body", "main", "nav", "figure"}


def extract_epub(path, cfg: DocumentConfig) -> Extraction:
    from lxml import etree  # noqa: PLC0415

    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        with open(path, "rb") as f:
            head = f.read(64)
        raise DocumentError("damaged_epub", f"{path} is not a readable EPUB (ZIP) file: {describe_bytes(head)}") from e
    with z:
        names = set(z.namelist())
        try:
            container = etree.fromstring(z.read("META-INF/container.xml"))
            opf_path = container.find(".//c:rootfile", OPF_NS).get("full-path")
            opf = etree.fromstring(z.read(opf_path))
        except (KeyError, AttributeError, etree.XMLSyntaxError, zipfile.BadZipFile) as e:
            raise DocumentError("damaged_epub", f"{path}: no readable package document ({e})") from e
        if "META-INF/encryption.xml" in names and b"EncryptedData" in z.read("META-INF/encryption.xml") \
                and b"fonts" not in z.read("META-INF/encryption.xml").lower():
            raise DocumentError("encrypted", f"{path} is DRM-protected (META-INF/encryption.xml); it cannot be read")
        base = posixpath.dirname(opf_path)
        manifest = {it.get("id"): it for it in opf.iterfind(".//o:manifest/o:item", OPF_NS)}
        spine = [manifest[ref.get("idref")] for ref in opf.iterfind(".//o:spine/o:itemref", OPF_NS)
                 if ref.get("idref") in manifest]
        ex = Extraction("", "epub", "lxml")
        parts = []
        for item in spine:
            if "nav" in (item.get("properties") or "").split():
                continue
            number = ex.pages + len(ex.unreadable_pages) + 1  # content documents, 1-based
            name = posixpath.normpath(posixpath.join(base, item.get("href")))
            first_image = len(ex.images)
            try:
                md = html_to_markdown(z.read(name), ex, number)
            except (KeyError, ValueError, etree.ParserError, zipfile.BadZipFile) as e:
                ex.unreadable_pages.append({"page": number, "reason": "damaged_chapter", "message": f"{name}: {e}"})
                continue
            ex.pages += 1
            for i, im in enumerate(ex.images[first_image:], start=first_image):
                src = posixpath.normpath(posixpath.join(posixpath.dirname(name), im["file"].split("#")[0]))
                if cfg.image_dir and src in names:
                    im["file"] = save_image(cfg, path, number, i, z.read(src), posixpath.splitext(src)[1])
            if md.strip():
                parts.append(md.strip())
    ex.markdown = "\n\n".join(parts) + ("\n" if parts else "")
    return ex


def html_to_markdown(raw: bytes, ex: Extraction | None = None, page: int = 0) -> str:
    """Markdown of an (X)HTML document; tables and images are counted into ``ex`` when given."""
    import lxml.html  # noqa: PLC0415

    root = lxml.html.document_fromstring(raw)
    for bad in root.xpath("//script|//style|//head"):
        bad.drop_tree()
    blocks: list[str] = []
    _walk(root, blocks, ex, page, depth=0)
    return "\n\n".join(b for b in blocks if b.strip())


def _inline(el) -> str:
    """Text of an inline subtree on one line (``<br>`` as a space)."""
    for br in el.iter("br"):
        br.tail = " " + (br.tail or "")
    return join_lines([" ".join(el.text_content().split())])


def _walk(el, blocks: list[str], ex, page: int, depth: int) -> None:
    tag = el.tag if isinstance(el.tag, str) else ""
    if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
        blocks.append("#" * int(tag[1]) + " " + _inline(el))
    elif tag in ("ul", "ol"):
        blocks.append("\n".join(_list_lines(el, 0)))
    elif tag == "table":
        rows = [[_inline(c) for c in tr if c.tag in ("td", "th")] for tr in el.iter("tr")]
        rows = [r for r in rows if any(r)]
        if rows:
            blocks.append(markdown_table(rows))
            if ex is not None:
                ex.tables += 1
    elif tag == "pre":
        blocks.append("```\n" + el.text_content().rstrip() + "\n```")
    elif tag == "blockquote":
        inner: list[str] = []
        _walk_children(el, inner, ex, page, depth)
        blocks.append("\n".join("> " + ln for b in inner for ln in b.splitlines()))
    elif tag == "img":
        _record_image(el, ex, page, "")
    elif tag == "figure":
        caption = el.find(".//figcaption")
        cap = _inline(caption) if caption is not None else ""
        for img in el.iter("img"):
            _record_image(img, ex, page, cap)
        if cap:
            blocks.append(cap)
    elif tag in BLOCK_TAGS or tag in ("html", "li", "dd", "dt", "dl", "center", "td", "th"):
        _walk_children(el, blocks, ex, page, depth)
    else:
        text = _inline(el)
        if text:
            blocks.append(text)


def _walk_children(el, blocks: list[str], ex, page: int, depth: int) -> None:
    """Block children in order; runs of inline content between them become paragraphs."""
    run: list[str] = [el.text or ""]

    def flush():
        text = join_lines([" ".join("".join(run).split())])
        if text:
            blocks.append(text)
        run.clear()

    for child in el:
        tag = child.tag if isinstance(child.tag, str) else ""
        if tag in BLOCK_TAGS or tag in ("h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "pre",
                                        "blockquote", "dl", "img", "figure", "hr"):
            flush()
            _walk(child, blocks, ex, page, depth + 1)
            run.append(child.tail or "")
        else:
            run.append(_inline(child) if tag else "")
            run.append(child.tail or "")
    flush()


def _list_lines(el, level: int) -> list[str]:
    out, n = [], 0
    for li in el:
        if li.tag != "li":
            continue
        n += 1
        nested = [c for c in li if c.tag in ("ul", "ol")]
        for c in nested:
            li.remove(c)
        marker = f"{n}." if el.tag == "ol" else "-"
        out.append("  " * level + f"{marker} {_inline(li)}")
        for c in nested:
            out += _list_lines(c, level + 1)
    return out


def _record_image(img, ex, page: int, caption: str) -> None:
    if ex is not None:
        ex.images.append({"page": page, "bbox": None, "caption": caption or img.get("alt", ""),
                          "file": img.get("src", "")})
