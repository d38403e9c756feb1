"""Corpus-processing throughput on the standard-library corpus: documents/s and MB/s per stage.

    python scripts/bench/data.py [--max-code-mb 4] [--workers 2] [--pdf 12] [--only pdf]

Peers measured in the same run: the clean phase on 1 process vs ``--workers`` processes, and
MinHash-LSH dedup vs brute-force pairwise Jaccard on a sample; with ``--quality N``, perplexity
scoring of N documents under the embedded SmolLM2 in batches vs one document at a time (both
compiled first). The PDF row (``measure_pdf``): our PDF reader vs pypdf's plain text extraction on
the same generated papers (two-column, table and Chinese pages; half of them with the columns'
lines interleaved in the content stream): pages/s, and character error rate against the known
text per page type; scanned copies of the first two pages go through OCR (pypdf reads nothing
there); ``--pymupdf4llm`` adds that layout-model reader as a third row. ``measure_loader`` is the
hook for the input pipeline's loader benchmark (scripts/bench/data_loader.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path


def measure_loader(corpus_dir: Path) -> dict | None:
    """Hook: the input pipeline's loader numbers on ``corpus_dir`` (None until it is wired in)."""
    return None


def measure_quality(texts: list[str], max_tokens: int, batch_size: int) -> dict:
    """Perplexity scoring of ``texts`` under the embedded SmolLM2: docs/s batched vs one at a time."""
    from intern_jax.checkpoint import embedded_model_path  # noqa: PLC0415
    from intern_jax.data.processing import quality  # noqa: PLC0415
    from intern_jax.data.processing.config import QualityConfig  # noqa: PLC0415

    model = quality.load_quality_model(str(embedded_model_path()))
    out = {}
    for name, size in (("batched", batch_size), ("one at a time", 1)):
        cfg = QualityConfig(max_tokens=max_tokens, batch_size=size)
        quality.perplexities(texts, model, cfg)  # compiles every length bucket
        t0 = time.perf_counter()
        quality.perplexities(texts, model, cfg)
        out[name] = len(texts) / (time.perf_counter() - t0)
    return out


def _plain(markdown: str) -> str:
    """Extracted Markdown as plain words: heading and list markers, table pipes and rules dropped."""
    import re  # noqa: PLC0415

    text = re.sub(r"^\|(---\|)+$", " ", markdown, flags=re.MULTILINE)
    text = re.sub(r"^(#+|-|\d+\.) ", " ", text, flags=re.MULTILINE).replace("|", " ")
    return " ".join(text.replace("**", "").replace("_", " ").split())


def cer(hypothesis: str, truth: str) -> float:
    """Character error rate: edit distance / reference length, on whitespace-collapsed text."""
    from rapidfuzz.distance import Levenshtein  # noqa: PLC0415

    truth = " ".join(truth.split())
    return Levenshtein.distance(" ".join(hypothesis.split()), truth) / max(len(truth), 1)


def measure_pdf(tmp: Path, n_docs: int, with_pymupdf4llm: bool = False) -> dict:
    """Pages/s and CER per page type of our PDF reader, pypdf (and pymupdf4llm) on generated papers."""
    import pypdf  # noqa: PLC0415

    from intern_jax.data.processing import document_samples, extract  # noqa: PLC0415
    from intern_jax.data.processing.config import DocumentConfig  # noqa: PLC0415

    tmp.mkdir(parents=True, exist_ok=True)
    samples = [document_samples.write_article_pdf(tmp / f"paper{i}.pdf", seed=i, row_major=i % 2 == 1)
               for i in range(n_docs)]
    readers = {"ours": lambda p: extract.extract_document(p, DocumentConfig(ocr="off")).page_texts,
               "pypdf": lambda p: [pg.extract_text() or "" for pg in pypdf.PdfReader(p).pages]}
    if with_pymupdf4llm:
        def layout_model(p):
            import pymupdf4llm  # noqa: PLC0415

            return [c["text"] for c in pymupdf4llm.to_markdown(str(p), page_chunks=True, header=False,
                                                              footer=False, show_progress=False)]
        readers["pymupdf4llm"] = layout_model
    kinds = ("two-column", "interleaved", "table", "chinese")  # page 1 is "interleaved" in row-major papers
    out = {"pages": sum(len(s.pages) for s in samples), "text": {}, "scanned": {}}
    for name, read in readers.items():
        read(samples[0].path)  # imports and first-call setup outside the timing
        t0 = time.perf_counter()
        pages = [read(s.path) for s in samples]
        seconds = time.perf_counter() - t0
        errors = {k: [] for k in kinds}
        for i, (s, got) in enumerate(zip(samples, pages)):
            page_kinds = (kinds[1] if i % 2 else kinds[0], *kinds[2:])
            for k, truth, text in zip(page_kinds, s.pages, got + [""] * (len(s.pages) - len(got))):
                errors[k].append(cer(_plain(text), truth))
        out["text"][name] = {"pages_per_s": out["pages"] / seconds,
                             **{k: sum(v) / len(v) for k, v in errors.items()}}
    scans = [document_samples.rasterise_pdf(s.path, tmp / f"scan{i}.pdf", dpi=200, pages=[0, 1])
             for i, s in enumerate(samples[: max(1, n_docs // 4)])]
    n_scanned = 2 * len(scans)
    for name, read in (("ours", lambda p: extract.extract_document(p, DocumentConfig()).page_texts),
                       ("pypdf", readers["pypdf"])):
        t0 = time.perf_counter()
        pages = [read(p) for p in scans]
        seconds = time.perf_counter() - t0
        errors = [cer(_plain(text), truth) for s, got in zip(samples, pages) for text, truth in zip(got, s.pages)]
        out["scanned"][name] = {"pages_per_s": n_scanned / seconds, "cer": sum(errors) / len(errors)}
    out["scanned_pages"] = n_scanned
    return out


def print_pdf(r: dict) -> None:
    from machine import cpu_name  # noqa: PLC0415

    print(f"\nPDF, {r['pages']} text pages (generated papers; {cpu_name()}):")
    kinds = ("two-column", "interleaved", "table", "chinese")
    print(f"{'reader':12s} {'pages/s':>8s} " + " ".join(f"{'CER ' + k:>16s}" for k in kinds))
    for name, m in r["text"].items():
        print(f"{name:12s} {m['pages_per_s']:8.1f} " + " ".join(f"{m[k]:16.3f}" for k in kinds))
    ours, peer = r["text"]["ours"], r["text"]["pypdf"]
    print(f"ours vs pypdf: {peer['pages_per_s'] / ours['pages_per_s']:.2f}x its time")
    print(f"scanned, {r['scanned_pages']} pages at 200 dpi (OCR, 1 process):")
    for name, m in r["scanned"].items():
        print(f"{name:12s} {m['pages_per_s']:8.2f} pages/s  CER {m['cer']:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-code-mb", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sample", type=int, default=150, help="documents in the brute-force dedup peer")
    parser.add_argument("--quality", type=int, default=0, metavar="N",
                        help="also time perplexity scoring of N documents (embedded SmolLM2)")
    parser.add_argument("--quality-max-tokens", type=int, default=128)
    parser.add_argument("--pdf", type=int, default=12, metavar="N", help="generated papers in the PDF row (0: none)")
    parser.add_argument("--pymupdf4llm", action="store_true", help="add pymupdf4llm's layout model to the PDF row")
    parser.add_argument("--only", choices=("pdf",), help="run only the PDF row")
    args = parser.parse_args(argv)
    if args.only == "pdf":
        print_pdf(measure_pdf(Path(tempfile.mkdtemp(prefix="bench_pdf_")), args.pdf, args.pymupdf4llm))
        return 0
    from intern_jax.data import corpus  # noqa: PLC0415
    from intern_jax.data.processing import dedup, runner  # noqa: PLC0415
    from intern_jax.data.processing.documents import StageStats  # noqa: PLC0415

    files = corpus.stdlib_sources(int(args.max_code_mb * (1 << 20)))
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    docstrings = corpus.write_docstring_documents(files, tmp / "docstrings.jsonl")
    inputs = [docstrings, *files]
    timings = {}
    for workers in (1, args.workers):
        cfg = dataclasses.replace(corpus.corpus_config(workers), shard_bytes=512 << 10)
        t0 = time.perf_counter()
        runner.clean_corpus(inputs, tmp / f"w{workers}", cfg, progress=False)
        timings[workers] = time.perf_counter() - t0
    out = tmp / f"w{args.workers}"
    runner.write_token_shards(out, cfg, str(corpus.train_corpus_tokenizer(out, 4000, 1 << 20)), progress=False)
    stats = runner.collect_stats(out)
    print(f"\nper stage (stage seconds summed over {args.workers} workers):")
    print(f"{'stage':12s} {'docs/s':>10s} {'MB/s':>8s}")
    for name, s in stats["stages"].items():
        if s["seconds"] > 0:
            print(f"{name:12s} {s['docs_in'] / s['seconds']:10.0f} {s['bytes_in'] / 1e6 / s['seconds']:8.2f}")
    mb = stats["stages"]["read"]["bytes_in"] / 1e6
    print(f"\nclean phase, {mb:.1f} MB: 1 process {timings[1]:.1f}s, {args.workers} processes "
          f"{timings[args.workers]:.1f}s -> {timings[1] / timings[args.workers]:.2f}x")
    texts = [d.text for d in itertools.islice(runner.kept_documents(out), args.sample)]
    cfg_d = cfg.dedup
    t0 = time.perf_counter()
    recs = [dedup.DedupRecord(str(i), dedup.content_hash(t), dedup.minhash_signature(t, cfg_d), len(t))
            for i, t in enumerate(texts)]
    lsh_dropped = dedup.find_duplicates(recs, cfg_d, StageStats("e"), StageStats("n"))
    t_lsh = time.perf_counter() - t0
    t0 = time.perf_counter()
    sh = [dedup.shingles(t, cfg_d.ngram) for t in texts]
    brute = {str(j) for j in range(len(texts)) for i in range(j)
             if len(sh[i] & sh[j]) / max(len(sh[i] | sh[j]), 1) >= cfg_d.threshold}
    t_brute = time.perf_counter() - t0
    print(f"dedup on {len(texts)} docs: MinHash-LSH {t_lsh:.2f}s vs brute-force Jaccard {t_brute:.2f}s "
          f"-> {t_brute / t_lsh:.2f}x; dropped {len(lsh_dropped)} vs {len(brute)} (brute force)")
    if args.quality:
        prose = [d.text for d in itertools.islice((d for d in runner.kept_documents(out) if d.source == "en"),
                                                  args.quality)]
        q = measure_quality(prose, args.quality_max_tokens, 8)
        print(f"perplexity on {len(prose)} docs ({args.quality_max_tokens} tokens): batched {q['batched']:.2f} "
              f"docs/s vs one at a time {q['one at a time']:.2f} docs/s -> {q['batched'] / q['one at a time']:.2f}x")
    loader = measure_loader(out)
    if loader:
        print("loader:", loader)
    if args.pdf:
        print_pdf(measure_pdf(tmp / "pdf", args.pdf, args.pymupdf4llm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
