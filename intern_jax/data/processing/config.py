"""Typed, frozen settings of the corpus-processing pipeline (one group per stage).

Every field has a default, so ``ProcessingConfig()`` is a working pipeline: English,
Chinese and code kept, Gopher/C4-style filters, PII scrubbing, exact + MinHash dedup,
no model-based quality step (no model configured) and the embedded SmolLM2 tokenizer.
Config files in ``configs/data/`` bind ``config = ProcessingConfig(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from intern_jax.config import ConfigError, check_fields

# Source-code file extensions routed to the ``code`` source without language identification.
CODE_EXTENSIONS = (
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".java", ".js", ".ts", ".go", ".rs",
    ".rb", ".php", ".sh", ".bash", ".lua", ".scala", ".kt", ".swift", ".cs", ".sql", ".r", ".jl",
    ".toml", ".yaml", ".yml", ".ini", ".cfg",
)


@dataclass(frozen=True)
class DocumentConfig:
    """PDF, EPUB and DOCX extraction to Markdown (``readers.documents``)."""

    pdf_backend: str = "pymupdf"  # pymupdf (built-in layout) | pymupdf4llm (layout model, slow) | mineru
    ocr: str = "auto"  # auto: pages with no usable text layer; force: every page; off: never
    ocr_languages: str = "eng+chi_sim"  # tesseract language data to use
    ocr_dpi: int = 200  # page rendering resolution for OCR
    image_dir: str = ""  # where embedded images are written (PNG); empty: only their captions are kept
    min_image_points: float = 36.0  # images smaller than this (PDF points, either side) are not recorded

    def __post_init__(self):
        if self.pdf_backend not in ("pymupdf", "pymupdf4llm", "mineru"):
            raise ConfigError(f"pdf_backend={self.pdf_backend!r}; use 'pymupdf', 'pymupdf4llm' or 'mineru'")
        if self.ocr not in ("auto", "force", "off"):
            raise ConfigError(f"ocr={self.ocr!r}; use 'auto', 'force' or 'off'")
        if self.ocr_dpi < 50:
            raise ConfigError(f"ocr_dpi={self.ocr_dpi} is too low to read text; use 150-300")


@dataclass(frozen=True)
class ReaderConfig:
    text_field: str = "text"  # JSONL / Parquet column holding the document
    id_field: str = "id"  # optional column copied into the document's metadata
    code_extensions: tuple[str, ...] = CODE_EXTENSIONS
    max_file_bytes: int = 4 << 30  # larger files are skipped (reason: file_too_large)
    max_invalid_utf8_fraction: float = 0.01  # more undecodable bytes than this: document dropped
    documents: DocumentConfig = field(default_factory=DocumentConfig)  # PDF, EPUB, DOCX


@dataclass(frozen=True)
class NormaliseConfig:
    fix_encoding: bool = True  # ftfy mojibake repair
    nfkc: bool = True  # Unicode NFKC; off for code (it would rewrite identifiers and literals)
    strip_control: bool = True
    collapse_whitespace: bool = True  # runs of spaces in prose; code indentation is kept


@dataclass(frozen=True)
class LanguageConfig:
    allowed: tuple[str, ...] = ("en", "zh")  # langid codes kept; each becomes a source directory
    threshold: float = 0.5  # minimum langid probability
    sample_chars: int = 2000  # classify on the first N characters
    detect_code: bool = True  # route text that looks like source code to ``code``
    keep_code: bool = True


@dataclass(frozen=True)
class FilterConfig:
    """Gopher (Rae et al. 2021) and C4 (Raffel et al. 2020) style rules, per document.

    Words are whitespace tokens for alphabetic scripts; in Chinese each Han character counts
    as a word (the text has no spaces), and mean-word-length is not applied to it.
    """

    enabled: bool = True
    min_chars: int = 50
    max_chars: int = 2_000_000
    min_words: int = 20
    max_words: int = 200_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_to_word_ratio: float = 0.1  # '#' and '...' per word
    max_digit_fraction: float = 0.3  # of non-space characters
    max_non_alnum_fraction: float = 0.35  # punctuation and symbols, of non-space characters
    min_alpha_word_fraction: float = 0.8  # words holding at least one letter
    max_duplicate_line_fraction: float = 0.3
    max_duplicate_line_char_fraction: float = 0.2
    top_ngram_max_fraction: tuple[float, ...] = (0.20, 0.18, 0.16)  # for n = 2, 3, 4
    duplicate_ngram_max_fraction: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)  # n = 5..10
    # Adult / spam / placeholder markers of web pages. Not a bare "xxx": in technical text it is a
    # programmer's to-do marker or placeholder ("XXX: fix", "CO_xxx flags"), so only its spam phrases.
    blocklist: tuple[str, ...] = ("lorem ipsum", "porn", "porno", "xxx videos", "xxx video", "xxx movies",
                                  "xxx sex", "free xxx", "hentai", "camgirl", "camgirls", "色情", "赌博")
    # code documents: only size and line-shape rules
    code_max_line_length: int = 1000
    code_min_alpha_fraction: float = 0.25


@dataclass(frozen=True)
class PiiConfig:
    enabled: bool = True
    email_token: str = "<EMAIL>"
    phone_token: str = "<PHONE>"
    ip_token: str = "<IP_ADDRESS>"
    keep_private_ips: bool = True  # 127.0.0.1, 10.x, 192.168.x: no one's personal address


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    num_perm: int = 256  # the Jaccard estimate's standard error is sqrt(J(1-J)/num_perm): 0.03 at J=0.75
    threshold: float = 0.7  # estimated Jaccard of word 5-gram shingles
    candidate_margin: float = 0.15  # LSH proposes pairs from threshold - margin on; each is checked exactly
    ngram: int = 5
    seed: int = 1


@dataclass(frozen=True)
class QualityConfig:
    """Model-based quality: keep the ``keep_fraction`` of documents with the lowest perplexity."""

    model: str = ""  # anything load_model accepts; empty: the step is off
    keep_fraction: float = 0.8
    max_tokens: int = 128  # perplexity on each document's first N tokens (cost grows with N)
    batch_size: int = 8  # documents scored together


@dataclass(frozen=True)
class OutputConfig:
    tokenizer: str = ""  # tokenizer path; empty: the embedded SmolLM2 tokenizer
    add_bos: bool = True
    add_eos: bool = True
    write_tfds: bool = False  # also build a TFDS (array_record) dataset under DIR/tfds


@dataclass(frozen=True)
class ProcessingConfig:
    readers: ReaderConfig = field(default_factory=ReaderConfig)
    normalise: NormaliseConfig = field(default_factory=NormaliseConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    num_workers: int = 0  # 0: all local cores
    shard_bytes: int = 16 << 20  # input files are grouped into work shards of about this size
    runner: str = "local"  # local | beam

    def __post_init__(self):
        check_fields(self, recursive=True)
        if self.runner not in ("local", "beam"):
            raise ConfigError(f"runner={self.runner!r}; use 'local' or 'beam'")
        if not 0.0 <= self.dedup.candidate_margin < 1.0:
            raise ConfigError(f"dedup.candidate_margin must be in [0, 1), got {self.dedup.candidate_margin}")
        if not 0.0 < self.dedup.threshold <= 1.0:
            raise ConfigError(f"dedup.threshold must be in (0, 1], got {self.dedup.threshold}")
        if not 0.0 < self.quality.keep_fraction <= 1.0:
            raise ConfigError(f"quality.keep_fraction must be in (0, 1], got {self.quality.keep_fraction}")
        if self.quality.max_tokens < 2 or self.quality.batch_size < 1:
            raise ConfigError(f"quality.max_tokens must be >= 2 and quality.batch_size >= 1, got "
                              f"{self.quality.max_tokens} and {self.quality.batch_size}")
        if self.shard_bytes <= 0:
            raise ConfigError(f"shard_bytes must be positive, got {self.shard_bytes}")
