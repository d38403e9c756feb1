"""Model-based quality: batched, length-bucketed, truncated perplexities equal a per-document
reference (transformers on the same weights; unbatched forward on the real SmolLM2), the
per-source keep_fraction keeps the lowest, and the runner wires the stage in and out."""

import math
import random

import numpy as np
import pytest

from intern_jax.checkpoint import embedded_model_path, load_model, save_hf, save_native
from intern_jax.data.processing import quality, report, runner
from intern_jax.data.processing.config import DedupConfig, FilterConfig, PiiConfig, ProcessingConfig, QualityConfig
from intern_jax.data.processing.documents import Document, StageStats
from intern_jax.testing import random_params, tiny_config
from intern_jax.tokenizer import train_sentencepiece

WORDS = ("the river runs under an old stone bridge while children watch boats and birds fly over "
         "green fields near quiet houses where people cook dinner every evening").split()


def _prose(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random tiny model with a small SentencePiece tokenizer, saved as a native checkpoint."""
    root = tmp_path_factory.mktemp("tiny_quality")
    rng = random.Random(0)
    (root / "text.txt").write_text("\n".join(_prose(rng, 30) for _ in range(300)))
    tok = train_sentencepiece([root / "text.txt"], root / "sp", 400)
    cfg = tiny_config(vocab_size=tok.vocab_size, max_position_embeddings=128)
    params = random_params(cfg, seed=3, scale=0.2)
    save_native(root / "model", cfg, params, tok)
    return root / "model", cfg, params


@pytest.mark.slow
def test_batched_truncated_perplexity_matches_transformers_per_document(tiny_model, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path, cfg, params = tiny_model
    model = load_model(path)
    rng = random.Random(1)
    texts = [_prose(rng, rng.randint(1, 60)) for _ in range(11)] + ["", "x"]
    qcfg = QualityConfig(max_tokens=40, batch_size=4)  # several length buckets, truncation, a ragged batch
    ours = quality.perplexities(texts, model, qcfg)

    save_hf(tmp_path / "hf", cfg, params, layout="llama")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tok = model.tokenizer
    truncated = 0
    for text, got in zip(texts, ours):
        ids = tok.encode(text, add_bos=True)  # the whole text encoded: prefix encoding must agree
        truncated += len(ids) > qcfg.max_tokens
        ids = ids[: qcfg.max_tokens]
        if len(ids) < 2:
            assert got == math.inf
            continue
        with torch.no_grad():
            loss = hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
        assert got == pytest.approx(math.exp(loss), rel=2e-4), text
    assert truncated >= 2


def test_keep_fraction_keeps_the_lowest_perplexities_per_source(tiny_model):
    path, _, _ = tiny_model
    model = load_model(path)
    rng = random.Random(2)
    docs = [Document(f"d{i}", _prose(rng, rng.randint(10, 40)), "p", rng.choice(["en", "code"]))
            for i in range(14)]
    qcfg = QualityConfig(model=str(path), keep_fraction=0.6, max_tokens=32, batch_size=4)
    stats = StageStats("quality")
    dropped = quality.perplexity_filter(docs, qcfg, stats, model=model)
    scores = quality.perplexities([d.text for d in docs], model, qcfg)
    source_of = {d.id: d.source for d in docs}
    for source in ("en", "code"):
        group = sorted((s, i) for i, (s, d) in enumerate(zip(scores, docs)) if d.source == source)
        keep = math.ceil(0.6 * len(group))
        assert {docs[i].id for _, i in group[keep:]} == {i for i in dropped if source_of[i] == source}
    assert [d.meta["perplexity"] for d in docs] == scores
    assert stats.docs_in == 14 and stats.docs_out == 14 - len(dropped)
    assert stats.drops == {"high_perplexity": len(dropped)}


def test_quality_stage_in_the_runner_and_skipped_stages_pass_through(tiny_model, tmp_path):
    path, _, _ = tiny_model
    rng = random.Random(4)
    (tmp_path / "raw").mkdir()
    for i in range(10):
        (tmp_path / "raw" / f"doc{i}.txt").write_text(_prose(rng, 40 + i))
    tokenizer = str(path)
    on = ProcessingConfig(num_workers=1, quality=QualityConfig(model=str(path), keep_fraction=0.5, max_tokens=32))
    runner.clean_corpus([tmp_path / "raw"], tmp_path / "on", on, progress=False)
    stats = runner.write_token_shards(tmp_path / "on", on, tokenizer, progress=False)["stages"]
    assert stats["quality"]["docs_in"] == stats["dedup_near"]["docs_out"] == 10
    assert stats["quality"]["docs_out"] == 5 == stats["tokenise"]["docs_in"]
    assert stats["quality"]["drops"] == {"high_perplexity": 5} and "off" not in stats["quality"]

    off = ProcessingConfig(num_workers=1, pii=PiiConfig(enabled=False), filters=FilterConfig(enabled=False),
                           dedup=DedupConfig(exact=False, near=False))
    runner.clean_corpus([tmp_path / "raw"], tmp_path / "off", off, progress=False)
    result = runner.write_token_shards(tmp_path / "off", off, tokenizer, progress=False)
    stats = result["stages"]
    for name, why in (("quality", "no model configured"), ("pii", "pii.enabled=False"),
                      ("filter", "filters.enabled=False"), ("dedup_exact", "dedup.exact=False"),
                      ("dedup_near", "dedup.near=False")):
        assert stats[name]["off"] == why
        assert stats[name]["docs_in"] == stats[name]["docs_out"] == 10  # passes everything through
    rows = {name: (kept, note, skipped) for name, kept, note, skipped in report.funnel_rows(result)}
    assert rows["quality"] == (10, "10  skipped (off: no model configured)", True)
    assert not rows["language"][2] and not rows["tokenise"][2]
    table = {line.split()[0]: line for line in report.format_table(result).splitlines()[1:]}
    assert "skipped (off: no model configured)" in table["quality"] and table["quality"].split()[1:3] == ["10", "10"]


def test_bad_quality_settings_are_clear_errors(tiny_model, tmp_path):
    from intern_jax.config import ConfigError

    with pytest.raises(ConfigError, match="quality.max_tokens"):
        ProcessingConfig(quality=QualityConfig(max_tokens=1))
    with pytest.raises(ValueError, match="cannot be loaded"):
        quality.load_quality_model(str(tmp_path / "missing"))
    path, cfg, params = tiny_model
    small = tiny_config(vocab_size=64)
    save_native(tmp_path / "small", small, random_params(small), load_model(path).tokenizer)
    with pytest.raises(ValueError, match="tokenizer matches its model"):
        quality.perplexities([_prose(random.Random(5), 30)], load_model(tmp_path / "small"), QualityConfig())


ENGLISH = [
    "The old lighthouse stood at the edge of the cliff for more than a hundred years. Every night the keeper "
    "climbed the narrow stairs to light the lamp, so that ships passing in the dark would stay away from the rocks.",
    "When the rain finally stopped, the children ran outside to play in the puddles. Their mother watched from "
    "the kitchen window and smiled, remembering how she used to do the same thing when she was their age.",
    "Scientists have found that regular exercise improves both physical and mental health. Even a short walk "
    "every day can lower blood pressure, reduce stress and help people sleep better at night.",
    "The library in our town is open every day except Sunday. Anyone can borrow up to ten books at a time, "
    "and the staff are always happy to help visitors find what they are looking for.",
]


@pytest.mark.slow
def test_smollm2_ranks_english_prose_below_shuffled_words_and_random_characters():
    import jax.numpy as jnp

    from intern_jax.model import internlm2

    model = load_model(embedded_model_path())
    rng = random.Random(6)
    shuffled = []
    for text in ENGLISH:
        words = text.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    garbage = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz      .,") for _ in range(len(t))) for t in ENGLISH]
    docs = [Document(f"{kind}{i}", t, "p", "en")
            for kind, group in (("prose", ENGLISH), ("shuffled", shuffled), ("garbage", garbage))
            for i, t in enumerate(group)]
    qcfg = QualityConfig(model=str(embedded_model_path()), keep_fraction=len(ENGLISH) / len(docs),
                         max_tokens=32, batch_size=12)
    dropped = quality.perplexity_filter(docs, qcfg, StageStats("quality"), model=model)
    ppl = {d.id: d.meta["perplexity"] for d in docs}
    assert set(dropped) == {d.id for d in docs if not d.id.startswith("prose")}
    for i in range(len(ENGLISH)):
        assert ppl[f"prose{i}"] * 3 < min(ppl[f"shuffled{i}"], ppl[f"garbage{i}"]), ppl

    ids = model.tokenizer.encode(ENGLISH[0], add_bos=True)[:32]  # one document, unbatched, no padding
    logits, _ = internlm2.forward(model.params, {"tokens": jnp.asarray([ids], jnp.int32)}, model.config)
    logits = np.asarray(logits[0, :-1], np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    direct = math.exp(-np.mean(logp[np.arange(len(ids) - 1), ids[1:]]))
    assert ppl["prose0"] == pytest.approx(direct, rel=1e-3)
