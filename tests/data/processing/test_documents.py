"""PDF, EPUB and DOCX readers: generated documents with known text come out as the right Markdown,
scanned pages are OCR'd, bad files are reported by name and reason while the rest go on."""

import json
import re
from dataclasses import replace

import pytest
from rapidfuzz import fuzz

from intern_jax.data.processing import document_samples as ds
from intern_jax.data.processing import extract, report, runner
from intern_jax.data.processing.config import (
    DedupConfig,
    DocumentConfig,
    FilterConfig,
    LanguageConfig,
    ProcessingConfig,
)


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def article(tmp_path_factory):
    """The sample article drawn with the columns' lines interleaved in the content stream."""
    root = tmp_path_factory.mktemp("pdf")
    sample = ds.write_article_pdf(root / "article.pdf", seed=3, row_major=True)
    return sample, extract.extract_document(sample.path, DocumentConfig(image_dir=str(root / "images")))


def _table_rows(markdown: str) -> list[list[str]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    assert re.fullmatch(r"\|(---\|)+", lines[1]), lines[:2]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[:1] + lines[2:]]


def test_two_column_page_reads_column_one_then_column_two(article):
    sample, ex = article
    md = _flat(ex.markdown)
    one, two = md.find(_flat(sample.column_one)), md.find(_flat(sample.column_two))
    assert one >= 0 and two >= 0, ex.markdown[:800]
    assert one < two


def test_ruled_4x3_table_becomes_markdown_table_with_same_cells(article):
    _, ex = article
    assert ex.tables == 1
    assert _table_rows(ex.markdown) == ds.TABLE


def test_headings_and_bulleted_list_are_markdown(article):
    _, ex = article
    lines = ex.markdown.splitlines()
    assert any(re.fullmatch(r"#+ Layout Extraction \w+", ln) for ln in lines), lines[:3]
    assert any(re.fullmatch(r"#+ Results", ln) for ln in lines)
    assert any(re.fullmatch(r"#+ " + ds.CHINESE_HEADING, ln) for ln in lines)
    items = [ln for ln in lines if ln.startswith("- ")]
    assert items == [f"- {t}" for t in ds.LIST_ITEMS]


def test_running_header_and_page_numbers_are_removed(article):
    _, ex = article
    assert ds.HEADER not in ex.markdown
    assert not [ln for ln in ex.markdown.splitlines() if ln.strip().isdigit()]
    assert ex.removed_lines == 6  # header + page number on each of 3 pages


def test_word_hyphenated_across_line_end_comes_out_whole(article):
    _, ex = article
    assert "".join(ds.HYPHENATED) in ex.markdown
    assert ds.HYPHENATED[0] + "-" not in ex.markdown


def test_image_and_caption_recorded_and_written(article):
    _, ex = article
    assert [(im["page"], im["caption"]) for im in ex.images] == [(2, ds.CAPTION)]
    assert ex.images[0]["file"].endswith(".png") and open(ex.images[0]["file"], "rb").read(4) == b"\x89PNG"
    assert ds.CAPTION in ex.markdown


def test_chinese_text_pdf_is_extracted_exactly(article):
    _, ex = article
    assert ds.CHINESE in ex.markdown


def test_whole_text_matches_ground_truth(article):
    sample, ex = article
    plain = _flat(re.sub(r"^#+ |^- |\|---|\||^\s*", " ", ex.markdown, flags=re.MULTILINE))
    truth = _flat(" ".join(sample.pages))
    assert fuzz.ratio(plain, truth) > 98


def test_scanned_pages_are_ocrd_in_english_and_chinese(tmp_path):
    sample = ds.write_article_pdf(tmp_path / "text.pdf", seed=5)
    scan = ds.rasterise_pdf(sample.path, tmp_path / "scan.pdf", dpi=200, pages=[0, 2])
    ex = extract.extract_document(scan, DocumentConfig(ocr_dpi=200))
    assert ex.ocr_pages == [1, 2] and not ex.unreadable_pages
    sentence = sample.column_one.split(". ")[1]
    assert fuzz.partial_ratio(sentence, _flat(ex.markdown)) > 90, ex.markdown[:500]
    assert fuzz.partial_ratio(ds.CHINESE, ex.markdown) > 85, ex.markdown[-300:]
    assert ds.HEADER not in ex.markdown


def test_ocr_off_reports_scanned_page_as_without_text(tmp_path):
    sample = ds.write_article_pdf(tmp_path / "text.pdf", seed=5, chinese=False)
    scan = ds.rasterise_pdf(sample.path, tmp_path / "scan.pdf", dpi=72, pages=[0])
    ex = extract.extract_document(scan, DocumentConfig(ocr="off"))
    assert ex.markdown == "" and ex.ocr_pages == []


def test_docx_to_markdown(tmp_path):
    ex = extract.extract_document(ds.write_docx(tmp_path / "d.docx"), DocumentConfig(image_dir=str(tmp_path / "im")))
    lines = ex.markdown.splitlines()
    assert "# Document Title" in lines and "## Section Two" in lines
    assert [ln for ln in lines if ln.startswith("- ")] == [f"- {t}" for t in ds.LIST_ITEMS]
    assert _table_rows(ex.markdown) == ds.TABLE and ex.tables == 1
    assert ds.CHINESE in ex.markdown and ds.CAPTION in ex.markdown
    assert [im["caption"] for im in ex.images] == [ds.CAPTION]
    assert open(ex.images[0]["file"], "rb").read(4) == b"\x89PNG"


def test_epub_to_markdown(tmp_path):
    ex = extract.extract_document(ds.write_epub(tmp_path / "b.epub"), DocumentConfig(image_dir=str(tmp_path / "im")))
    lines = ex.markdown.splitlines()
    assert lines.index("# Chapter One") < lines.index("# Chapter Two")
    assert [ln for ln in lines if ln.startswith("- ")] == [f"- {t}" for t in ds.LIST_ITEMS]
    assert _table_rows(ex.markdown) == ds.TABLE and ex.pages == 2
    assert ds.CHINESE in ex.markdown and ds.CAPTION in ex.markdown
    assert [(im["page"], im["caption"]) for im in ex.images] == [(2, ds.CAPTION)]
    assert open(ex.images[0]["file"], "rb").read(4) == b"\x89PNG"


@pytest.fixture(scope="module")
def corpus_with_bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    good = ds.write_article_pdf(root / "good.pdf", seed=7).path
    ds.write_docx(root / "report.docx")
    ds.write_epub(root / "book.epub")
    ds.write_encrypted_pdf(good, root / "encrypted.pdf")
    data = good.read_bytes()
    (root / "truncated.pdf").write_bytes(data[: len(data) // 2])
    (root / "empty.pdf").write_bytes(b"")
    (root / "page.pdf").write_text("<!DOCTYPE html><html><body><p>Not found</p></body></html>")
    (root / "notes.txt").write_text("A plain text note about rivers and mountains. " * 5)
    return root


def test_bad_files_reported_by_name_and_reason_and_the_rest_processed(corpus_with_bad_files, tmp_path):
    root = corpus_with_bad_files
    cfg = ProcessingConfig(filters=FilterConfig(enabled=False), language=LanguageConfig(threshold=0.0),
                           dedup=DedupConfig(near=False), num_workers=2)  # the DOCX and EPUB share their text
    runner.clean_corpus([root], tmp_path / "out", cfg, progress=False)
    stats = runner.collect_stats(tmp_path / "out")
    ext = stats["stages"]["extract"]
    reasons = {f["path"].rsplit("/", 1)[1]: f["reason"] for f in ext["failures"]}
    assert reasons == {"encrypted.pdf": "encrypted", "truncated.pdf": "truncated", "empty.pdf": "empty_file",
                       "page.pdf": "not_a_pdf"}
    assert ext["docs_in"] == 7 and ext["docs_out"] == 3
    assert ext["counts"]["pdf_pages"] == 3 and ext["counts"]["pdf_tables"] == 1
    kept = {d.path.rsplit("/", 1)[1] for d in runner.kept_documents(tmp_path / "out")}
    assert kept == {"good.pdf", "report.docx", "book.epub", "notes.txt"}
    assert [r[0] for r in report.funnel_rows(stats)][:2] == ["extract", "read"]


def test_extract_only_writes_markdown_and_sidecar_per_document(corpus_with_bad_files, tmp_path):
    cfg = replace(ProcessingConfig(), num_workers=1)
    summary = extract.extract_inputs([corpus_with_bad_files], tmp_path / "x", cfg, progress=False)
    assert summary["documents"] == 7 and summary["extracted"] == 3
    assert {f["reason"] for f in summary["failures"]} == {"encrypted", "truncated", "empty_file", "not_a_pdf"}
    side = json.loads((tmp_path / "x" / "good.pdf.json").read_text())
    assert side["pages"] == 3 and side["tables"] == 1 and side["ocr_pages"] == [] and side["seconds"] > 0
    assert (tmp_path / "x" / "good.pdf.md").read_text().startswith("# Layout Extraction")
    assert json.loads((tmp_path / "x" / "page.pdf.json").read_text())["error"] == "not_a_pdf"
    assert not (tmp_path / "x" / "notes.txt.json").exists()


def test_monospaced_lines_become_a_code_block_with_indentation(tmp_path):
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(tmp_path / "code.pdf"))
    c.setFont("Helvetica", 10)
    c.drawString(56, 760, "The function below adds one to its argument and returns the result.")
    code = ["def add_one(x):", "    return x + 1"]
    c.setFont("Courier", 10)
    for i, line in enumerate(code):
        c.drawString(56 + 6 * (len(line) - len(line.lstrip())), 740 - 12 * i, line.lstrip())
    c.save()
    md = extract.extract_document(tmp_path / "code.pdf").markdown
    assert "```\n" + "\n".join(code) + "\n```" in md, md


def test_beam_runner_extracts_the_same_documents_and_failures(corpus_with_bad_files, tmp_path):
    cfg = ProcessingConfig(filters=FilterConfig(enabled=False), language=LanguageConfig(threshold=0.0),
                           dedup=DedupConfig(near=False), num_workers=1)
    runs = {}
    for name, c in (("local", cfg), ("beam", replace(cfg, runner="beam"))):
        runner.clean_corpus([corpus_with_bad_files], tmp_path / name, c, progress=False)
        failures = runner.collect_stats(tmp_path / name)["stages"]["extract"]["failures"]
        runs[name] = ([(d.path, d.text) for d in runner.kept_documents(tmp_path / name)],
                      sorted((f["path"], f["reason"]) for f in failures))
    assert runs["beam"] == runs["local"] and len(runs["local"][0]) == 4 and len(runs["local"][1]) == 4


def test_page_that_cannot_be_read_is_counted_and_named(tmp_path):
    import pymupdf

    from intern_jax.data.processing import readers
    from intern_jax.data.processing.config import ReaderConfig
    from intern_jax.data.processing.documents import StageStats

    sample = ds.write_article_pdf(tmp_path / "text.pdf", seed=2, chinese=False)
    mixed = ds.rasterise_pdf(sample.path, tmp_path / "mixed.pdf", dpi=72, pages=[0])
    with pymupdf.open(str(mixed)) as doc, pymupdf.open(str(sample.path)) as text:  # page 2 keeps its text
        doc.insert_pdf(text, from_page=1, to_page=1)
        doc.save(str(tmp_path / "mixed2.pdf"))
    cfg = ReaderConfig(documents=DocumentConfig(ocr_languages="eng+nosuchlang"))
    stats = StageStats("extract")
    doc = readers.read_document(str(tmp_path / "mixed2.pdf"), "pdf", cfg, stats)
    assert doc is not None and ds.CAPTION in doc.text
    assert stats.counts["pdf_unreadable_pages"] == 1
    [failure] = stats.failures
    assert failure["page"] == 1 and failure["reason"] == "ocr_unavailable" and "nosuchlang" in failure["message"]


def test_unruled_table_between_paragraphs_becomes_markdown_table(tmp_path):
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(tmp_path / "booktabs.pdf"))
    c.setFont("Helvetica", 10)
    c.drawString(56, 760, "The measured densities and melting points of three metals are listed below.")
    c.line(56, 745, 400, 745)  # horizontal rules only, as LaTeX's booktabs draws them
    for r, row in enumerate(ds.TABLE):
        for j, cell in enumerate(row):
            c.drawString(56 + 130 * j, 730 - 16 * r, cell)
    c.line(56, 730 - 16 * len(ds.TABLE) + 8, 400, 730 - 16 * len(ds.TABLE) + 8)
    c.drawString(56, 640, "Gold melts at a lower temperature than copper although it is much denser.")
    c.save()
    ex = extract.extract_document(tmp_path / "booktabs.pdf")
    assert _table_rows(ex.markdown) == ds.TABLE, ex.markdown
    assert ex.markdown.index("listed below") < ex.markdown.index("| Metal") < ex.markdown.index("Gold melts")


def test_documents_without_their_extension_are_detected_by_content(corpus_with_bad_files, tmp_path):
    from intern_jax.data.processing import readers
    from intern_jax.data.processing.config import ReaderConfig
    from intern_jax.data.processing.documents import StageStats

    for src, name in (("good.pdf", "download"), ("report.docx", "report.zip"), ("book.epub", "book.bin")):
        (tmp_path / name).write_bytes((corpus_with_bad_files / src).read_bytes())
    (tmp_path / "data.bin").write_bytes(b"\x00\x01 not a document")
    cfg = ReaderConfig()
    found = {p.rsplit("/", 1)[1]: readers.file_kind(p, cfg) for p in readers.list_inputs([tmp_path], cfg,
                                                                                         StageStats("read"))}
    assert found == {"download": "pdf", "report.zip": "docx", "book.bin": "epub"}


def test_damaged_docx_and_unexpected_library_errors_are_reported_not_raised(tmp_path, monkeypatch):
    import zipfile

    from intern_jax.data.processing import pdf_reader, readers
    from intern_jax.data.processing.config import ReaderConfig
    from intern_jax.data.processing.documents import StageStats

    good = ds.write_docx(tmp_path / "good.docx")
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tmp_path / "cut.docx", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, data[: len(data) // 2] if item.filename == "word/document.xml" else data)
    ds.write_article_pdf(tmp_path / "odd.pdf", seed=1, chinese=False)
    monkeypatch.setattr(pdf_reader, "extract_pdf", lambda path, cfg: 1 / 0)
    stats = StageStats("extract")
    for name, kind in (("cut.docx", "docx"), ("odd.pdf", "pdf"), ("good.docx", "docx")):
        readers.read_document(str(tmp_path / name), kind, ReaderConfig(), stats)
    assert [(f["path"].rsplit("/", 1)[1], f["reason"]) for f in stats.failures] == [
        ("cut.docx", "damaged_docx"), ("odd.pdf", "extraction_error")]
    assert "ZeroDivisionError" in stats.failures[1]["message"] and stats.docs_out == 1


def test_reading_order_over_boxes_title_then_three_columns_top_to_bottom():
    from intern_jax.data.processing.pdf_layout import Line, reading_order

    title = Line(50, 40, 550, 60, "Title", 18)
    columns = [[Line(50 + 170 * c, 80 + 14 * i, 200 + 170 * c, 92 + 14 * i, f"c{c}l{i}", 10) for i in range(5)]
               for c in range(3)]
    interleaved = [ln for row in zip(*columns) for ln in row]  # stream order: across the columns
    leaves = reading_order([*reversed(interleaved), title], col_gap=10, row_gap=6)
    assert [ln.text for leaf in leaves for ln in leaf] == ["Title"] + [ln.text for col in columns for ln in col]
