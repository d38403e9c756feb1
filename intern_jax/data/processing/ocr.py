"""OCR of page images through Debian's ``tesseract-ocr`` (English and Simplified Chinese data) via pytesseract.

``ocr_problem`` says why OCR cannot run here (None when it can); ``ocr_image`` returns the text of
one grey page image, with the spaces tesseract puts between Chinese characters removed. Layout,
tables and headings of scanned pages are not recovered: OCR'd pages become plain paragraphs.
"""

from __future__ import annotations

import functools
import os

INSTALL_HINT = "install it with: apt-get install tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim"


@functools.lru_cache(maxsize=8)
def ocr_problem(languages: str) -> str | None:
    """None when tesseract and every ``+``-separated language are installed, else what is missing."""
    try:
        import pytesseract  # noqa: PLC0415
    except ImportError:
        return "pytesseract is not installed (pip install pytesseract)"
    try:
        installed = set(pytesseract.get_languages(config=""))
    except (pytesseract.TesseractNotFoundError, OSError):
        return f"the tesseract binary is not on PATH; {INSTALL_HINT}"
    missing = [lang for lang in languages.split("+") if lang not in installed]
    if missing:
        return f"tesseract has no language data for {', '.join(missing)}; {INSTALL_HINT}"
    return None


def ocr_image(image, languages: str) -> str:
    """Text of a PIL image. One tesseract thread: documents already run in parallel."""
    import pytesseract  # noqa: PLC0415

    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    return pytesseract.image_to_string(image, lang=languages)
