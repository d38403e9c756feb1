"""The embedded default corpus: the Python standard library that ships with the interpreter.

With no user data, ``build_corpus(DIR)`` reads ``sysconfig.get_paths()["stdlib"]`` at run time
(nothing is copied into the repository): source files become the ``code`` source, module /
class / function docstrings (one document per module) the ``en`` source. It runs the
processing pipeline, trains a SentencePiece tokenizer on a sample of the cleaned text and
writes token shards + manifest + tokenizer into DIR. Test suites and site-packages are left
out and the size is capped so the build takes about a minute on two cores; reruns reuse work.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import random
import sysconfig
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from intern_jax.data.processing import runner, shards
from intern_jax.data.processing.config import FilterConfig, ProcessingConfig

EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3",
                 "turtledemo", "ensurepip", "venv"}
DEFAULT_DIR = "runs/corpus"
VOCAB_RANGE = (512, 1 << 18)  # byte fallback alone takes 259 ids; beyond 256k the shards' int32 ids are fine but
# the sample of a few MB cannot fill the vocabulary
MIN_CODE_MB = 0.5  # less leaves too little text to train the tokenizer on


def check_corpus_settings(*, vocab_size: int, max_code_mb: float) -> None:
    """A ValueError naming the setting (and build_corpus.py's flag) before any work is done."""
    low, high = VOCAB_RANGE
    if not low <= vocab_size <= high:
        raise ValueError(f"vocab_size (--vocab-size) must be between {low} and {high}, got {vocab_size}")
    if not (math.isfinite(max_code_mb) and max_code_mb >= MIN_CODE_MB):
        raise ValueError(f"max_code_mb (--max-code-mb) must be at least {MIN_CODE_MB} (MB of standard-library "
                         f"source to read; default 6), got {max_code_mb}")



def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(max_bytes: int = 6 << 20, root: Path | None = None) -> list[Path]:
    """Standard-library ``.py`` files (no tests, no site-packages), sorted, up to ``max_bytes``."""
    root = root or stdlib_dir()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith(("config-", ".")))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    out, total = [], 0
    for f in sorted(files):
        size = f.stat().st_size
        if total + size > max_bytes:
            continue
        out.append(f)
        total += size
    return out


def module_docstrings(path: Path) -> str:
    """A module's docstrings (module, then classes and functions in source order), blank-line separated."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    docs = [ast.get_docstring(n, clean=True) for n in nodes]
    return "\n\n".join(d for d in docs if d)


def write_docstring_documents(files: list[Path], path: Path, progress: bool = True) -> Path:
    """One JSONL record per module with docstrings: ``{"text", "id"}`` (module path as id)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for file in tqdm(files, desc="docstrings", unit="file", leave=False, disable=not progress):
            text = module_docstrings(file)
            if text:
                f.write(json.dumps({"id": str(file), "text": text}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def corpus_config(num_workers: int = 0) -> ProcessingConfig:
    """Defaults with filters loosened for docstrings (short, symbol-rich reference prose)."""
    return ProcessingConfig(
        num_workers=num_workers,
        shard_bytes=1 << 20,
        filters=FilterConfig(min_words=10, max_non_alnum_fraction=0.45, max_symbol_to_word_ratio=0.3,
                             max_mean_word_length=12.0, max_duplicate_line_fraction=0.5,
                             max_duplicate_line_char_fraction=0.4, min_alpha_word_fraction=0.6),
    )


def train_corpus_tokenizer(output: Path, vocab_size: int, sample_bytes: int, seed: int = 0) -> Path:
    """SentencePiece on a sample of the cleaned documents; saved (HF layout + .model) in ``output/tokenizer``."""
    from intern_jax.tokenizer import train_sentencepiece  # noqa: PLC0415

    directory = output / "tokenizer"
    done = directory / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("vocab_size") == vocab_size:
        return directory
    docs = list(runner.kept_documents(output))
    random.Random(seed).shuffle(docs)
    directory.mkdir(parents=True, exist_ok=True)
    sample, size = directory / "train_sample.txt", 0
    with open(sample, "w", encoding="utf-8") as f:
        for d in docs:
            piece = d.text[:8192]
            f.write(piece + "\n")
            size += len(piece.encode("utf-8"))
            if size >= sample_bytes:
                break
    try:
        tok = train_sentencepiece([sample], directory / "tokenizer", vocab_size, input_sentence_size=200_000)
    except RuntimeError as e:  # sentencepiece's own check, e.g. a vocabulary larger than the text supports
        reason = str(e).strip().splitlines()[-1].split("] ")[-1]
        raise ValueError(f"cannot train a {vocab_size}-token tokenizer on {size} bytes of text: {reason} "
                         "(lower --vocab-size or read more text with --max-code-mb)") from None
    tok.save(directory)
    sample.unlink()
    shards.write_json_atomic(done, {"vocab_size": vocab_size})
    return directory


def build_corpus(output=DEFAULT_DIR, *, vocab_size: int = 8000, max_code_bytes: int = 6 << 20,
                 sample_bytes: int = 3 << 20, cfg: ProcessingConfig | None = None, progress: bool = True) -> dict:
    """Build (or finish building) the stdlib corpus in ``output``; returns the run's stats."""
    check_corpus_settings(vocab_size=vocab_size, max_code_mb=max_code_bytes / (1 << 20))
    output = Path(output)
    cfg = cfg or corpus_config()
    files = stdlib_sources(max_code_bytes)
    docstrings = output / "sources" / "docstrings.jsonl"
    if not docstrings.is_file():
        write_docstring_documents(files, docstrings, progress)
    runner.clean_corpus([docstrings, *files], output, cfg, progress)
    tokenizer_dir = train_corpus_tokenizer(output, vocab_size, sample_bytes)
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, tokenizer=str(tokenizer_dir)))
    return runner.write_token_shards(output, cfg, str(tokenizer_dir), progress)
