"""Input pipeline benchmark: packing efficiency and delivered tokens/s against the training step.

Measures, in one run, the pretraining loader (``make_pretrain_iterator``) with 0 and 2 grain
workers and, as the peer, a jitted loss + grad + AdamW step of the tiny model
(``configs/model/tiny.py``) at the same sequence length and batch; prints packing efficiency
(non-padding fraction) and the loader / training tokens-per-second ratio (goal: >= 10x).
Uses ``runs/corpus`` when it exists, otherwise a synthetic corpus (log-normal document lengths).

    .venv/bin/python scripts/bench/data_loader.py [--corpus DIR] [--seq-len 2048] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from intern_jax.data.pipeline import DataConfig, make_pretrain_iterator, write_token_corpus

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = REPO / "runs" / "corpus"


def synthetic_corpus(directory: str | Path, documents: int = 20000, vocab_size: int = 512, seed: int = 0) -> Path:
    """Two sources of random documents, log-normal lengths (median 400 tokens, a long tail past 2048)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(400), 1.2, size=documents).astype(int), 2, 50_000)
    docs = [rng.integers(3, vocab_size, n).astype(np.int32) for n in lengths]
    split = int(0.7 * documents)
    write_token_corpus(directory, {"web": docs[:split], "code": docs[split:]}, shards=4, vocab_size=vocab_size)
    return Path(directory)


def measure_loader(corpus_dir, seq_len, batch_size, steps, num_workers) -> dict:
    cfg = DataConfig(path=str(corpus_dir), seq_len=seq_len, batch_size=batch_size, num_workers=num_workers)
    it = make_pretrain_iterator(cfg, process_index=0, process_count=1)
    try:
        t0 = time.perf_counter()
        next(it)  # start-up (worker processes, first packing group) is not steady state
        startup = time.perf_counter() - t0
        real = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = next(it)
            real += int((batch["segment_ids"] > 0).sum())
        seconds = time.perf_counter() - t0
    finally:
        it.close()
    total = steps * batch_size * seq_len
    return {
        "num_workers": num_workers,
        "startup_s": round(startup, 3),
        "tokens_per_s": total / seconds,
        "packing_efficiency": real / total,
    }


def measure_train_step(seq_len, batch_size, steps, vocab_size=None) -> dict:
    """Tokens/s of a jitted loss + grad + AdamW update of the tiny model on contract batches."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import optax  # noqa: PLC0415

    from intern_jax.config import load_config  # noqa: PLC0415
    from intern_jax.model import internlm2  # noqa: PLC0415

    cfg = load_config(REPO / "configs" / "model" / "tiny.py")
    cfg = dataclasses.replace(cfg, max_position_embeddings=max(cfg.max_position_embeddings, seq_len))
    if vocab_size:
        cfg = dataclasses.replace(cfg, vocab_size=max(cfg.vocab_size, vocab_size))
    params = internlm2.init(cfg, jax.random.key(0))
    optimizer = optax.adamw(1e-3)
    opt_state = optimizer.init(params)

    def loss_fn(params, batch):
        logits, _ = internlm2.forward(params, batch, cfg)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
        return (nll * batch["loss_mask"]).sum() / jnp.maximum(batch["loss_mask"].sum(), 1.0)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (batch_size, seq_len)).astype(np.int32)
    batch = {
        "tokens": tokens,
        "targets": np.roll(tokens, -1, axis=1),
        "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1)),
        "segment_ids": np.ones((batch_size, seq_len), np.int32),
        "loss_mask": np.ones((batch_size, seq_len), np.float32),
    }
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    t0 = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, batch)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, batch)
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": steps * batch_size * seq_len / seconds, "compile_s": round(compile_s, 2),
            "model": cfg.name, "backend": jax.default_backend()}


def bench_loader(corpus_dir=None, seq_len: int = 2048, batch_size: int = 8, steps: int = 100,
                 train_steps: int = 3, workers=(0, 2)) -> dict:
    """Loader tokens/s and packing efficiency per worker count, the training step's tokens/s, ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        if corpus_dir is None:
            corpus_dir = DEFAULT_CORPUS if (DEFAULT_CORPUS / "manifest.json").is_file() else synthetic_corpus(tmp)
        manifest = json.loads((Path(corpus_dir) / "manifest.json").read_text())
        loaders = [measure_loader(corpus_dir, seq_len, batch_size, steps, w) for w in workers]
    train = measure_train_step(seq_len, batch_size, train_steps, vocab_size=manifest.get("vocab_size") or None)
    for loader in loaders:
        loader["ratio_vs_train_step"] = loader["tokens_per_s"] / train["tokens_per_s"]
    return {"corpus": str(corpus_dir), "seq_len": seq_len, "batch_size": batch_size, "loaders": loaders,
            "train_step": train}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="processed corpus directory (default: runs/corpus, else synthetic)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100, help="loader batches timed per worker count")
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args()
    result = bench_loader(args.corpus, args.seq_len, args.batch_size, args.steps, args.train_steps)
    train = result["train_step"]
    print(f"corpus {result['corpus']}  seq_len {args.seq_len}  batch {args.batch_size}")
    print(f"train step ({train['model']}, {train['backend']}): {train['tokens_per_s']:,.0f} tokens/s")
    for loader in result["loaders"]:
        print(f"loader, {loader['num_workers']} workers: {loader['tokens_per_s']:,.0f} tokens/s, "
              f"packing efficiency {loader['packing_efficiency']:.1%}, "
              f"{loader['ratio_vs_train_step']:.1f}x the train step (goal >= 10x)")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
