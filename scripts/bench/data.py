"""Corpus-processing throughput on the standard-library corpus: documents/s and MB/s per stage.

    python scripts/bench/data.py [--max-code-mb 4] [--workers 2]

Peers measured in the same run: the clean phase on 1 process vs ``--workers`` processes, and
MinHash-LSH dedup vs brute-force pairwise Jaccard on a sample; with ``--quality N``, perplexity
scoring of N documents under the embedded SmolLM2 in batches vs one document at a time (both
compiled first). ``measure_loader`` is the hook for the input pipeline's loader benchmark
(scripts/bench/data_loader.py).
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-code-mb", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sample", type=int, default=150, help="documents in the brute-force dedup peer")
    parser.add_argument("--quality", type=int, default=0, metavar="N",
                        help="also time perplexity scoring of N documents (embedded SmolLM2)")
    parser.add_argument("--quality-max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
