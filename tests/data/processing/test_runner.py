"""End to end: shards + manifest decode back to the documents; parallel, resumed, Beam and TFDS
runs give the same output as one plain run."""

import json
import random
import sys

import numpy as np
import pytest

from intern_jax.checkpoint import embedded_model_path
from intern_jax.data.processing import filters, runner, shards
from intern_jax.data.processing.config import ProcessingConfig
from intern_jax.tokenizer import load_tokenizer

VOCAB = ("river mountain people history garden machine language music winter station between quickly "
         "because another without morning science window letter market bridge forest travel simple").split()


def _prose(rng, n=120):
    return " ".join(rng.choice(VOCAB) for _ in range(n)) + "."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("raw")
    en = [_prose(rng) for _ in range(24)]
    for part in range(3):
        with open(root / f"part{part}.jsonl", "w") as f:
            for t in en[part * 8 : (part + 1) * 8]:
                f.write(json.dumps({"text": t}) + "\n")
            f.write("{broken\n")
    with open(root / "part3.jsonl", "w") as f:
        f.write(json.dumps({"text": en[0]}) + "\n")  # exact duplicate of the first document
        f.write(json.dumps({"text": "北京是中国的首都，也是全国的政治中心和文化中心。这座城市有三千多年的历史，"
                                    "保存着大量古代建筑，例如故宫和天坛。每年都有很多游客来这里参观学习。"}) + "\n")
    (root / "src").mkdir()
    for i in range(3):
        (root / "src" / f"m{i}.py").write_text(f"def f{i}(x):\n    '''Return x plus {i}.'''\n    return x + {i}\n" * 3)
    return root


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    """The embedded SmolLM2 tokenizer saved as tokenizer.json: every worker process loads it quickly."""
    directory = tmp_path_factory.mktemp("tokenizer")
    load_tokenizer(embedded_model_path()).save(directory)
    return str(directory)


def _config(**kw):
    return ProcessingConfig(num_workers=1, shard_bytes=5000, **kw)


def _outputs(directory):
    manifest = shards.load_manifest(directory)
    return manifest, {s: [r.tolist() for f in e["files"] for r in shards.read_records(directory / f)]
                      for s, e in manifest["sources"].items()}


@pytest.fixture(scope="module")
def plain_run(corpus, tokenizer_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    cfg = _config()
    runner.clean_corpus([corpus], out, cfg, progress=False)
    stats = runner.write_token_shards(out, cfg, tokenizer_path, progress=False)
    return out, stats


def test_records_are_tokenizer_encodings_of_kept_documents(plain_run, tokenizer_path):
    out, stats = plain_run
    manifest, records = _outputs(out)
    tok = load_tokenizer(tokenizer_path)
    assert manifest["vocab_size"] == tok.vocab_size and load_tokenizer(manifest["tokenizer"]).vocab_size
    kept = list(runner.kept_documents(out))
    assert sorted(manifest["sources"]) == ["code", "en", "zh"]
    for source, recs in records.items():
        texts = [d.text for d in kept if d.source == source]
        bos = [tok.bos_id] if tok.bos_id is not None else []
        eos = [tok.eos_id] if tok.eos_id is not None else []
        assert recs == [bos + tok.encode(t) + eos for t in texts]
        assert manifest["sources"][source]["documents"] == len(recs)
        assert manifest["sources"][source]["tokens"] == sum(map(len, recs))
    assert len(records["en"]) == 24 and len(records["code"]) == 3
    st = stats["stages"]
    assert st["read"]["drops"] == {"malformed_json": 3}
    assert st["dedup_exact"]["drops"] == {"exact_duplicate": 1}
    assert st["quality"]["off"] == "no model configured"
    assert st["quality"]["docs_in"] == st["quality"]["docs_out"] == st["dedup_near"]["docs_out"]
    assert json.loads((out / "stats.json").read_text())["stages"]["tokenise"]["tokens"] == sum(
        e["tokens"] for e in manifest["sources"].values())
    assert (out / "funnel.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_two_processes_give_the_same_shards(plain_run, corpus, tokenizer_path, tmp_path):
    cfg = ProcessingConfig(num_workers=2, shard_bytes=5000)
    runner.clean_corpus([corpus], tmp_path, cfg, progress=False)
    runner.write_token_shards(tmp_path, cfg, tokenizer_path, progress=False)
    assert _outputs(tmp_path) == _outputs(plain_run[0])


def test_a_failed_run_resumes_without_redoing_finished_shards(plain_run, corpus, tokenizer_path, tmp_path,
                                                              monkeypatch):
    real = filters.prose_drop_reason
    poison = json.loads((corpus / "part1.jsonl").read_text().split("\n")[2])["text"]

    def failing(text, source, cfg):
        if text == poison:
            raise RuntimeError("injected failure")
        return real(text, source, cfg)

    monkeypatch.setattr(filters, "prose_drop_reason", failing)
    cfg = _config()
    with pytest.raises(RuntimeError, match="rerun the same command to resume"):
        runner.clean_corpus([corpus], tmp_path, cfg, progress=False)
    markers = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work" / "clean").glob("*.done")}
    shard_list = runner.load_shard_list(tmp_path)
    assert len(markers) == len(shard_list) - 1  # every shard but the failing one finished
    monkeypatch.setattr(filters, "prose_drop_reason", real)
    runner.clean_corpus([corpus], tmp_path, cfg, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work" / "clean").glob("*.done")}
    assert all(after[k] == v for k, v in markers.items()) and len(after) == len(shard_list)
    runner.write_token_shards(tmp_path, cfg, tokenizer_path, progress=False)
    runner.write_token_shards(tmp_path, cfg, tokenizer_path, progress=False)  # finished: a no-op rerun
    assert _outputs(tmp_path) == _outputs(plain_run[0])


def test_no_readable_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no readable input"):
        runner.clean_corpus([tmp_path / "nothing"], tmp_path / "out", _config(), progress=False)


@pytest.mark.slow
def test_beam_runner_keeps_the_same_documents(plain_run, corpus, tokenizer_path, tmp_path):
    cfg = _config(runner="beam")
    runner.clean_corpus([corpus], tmp_path, cfg, progress=False)
    runner.write_token_shards(tmp_path, cfg, tokenizer_path, progress=False)
    assert [d.text for d in runner.kept_documents(tmp_path)] == [d.text for d in runner.kept_documents(plain_run[0])]
    assert _outputs(tmp_path) == _outputs(plain_run[0])


def test_tfds_data_source_reads_the_shards_without_tensorflow(plain_run, tmp_path):
    from intern_jax.data.processing import tfds_builder

    out = plain_run[0]
    data_dir = tfds_builder.build_tfds_dataset(out, tmp_path / "tfds")
    source = tfds_builder.data_source(data_dir)
    _, records = _outputs(out)
    assert sorted(source) == sorted(records)
    for split, recs in records.items():
        got = sorted(np.asarray(source[split][i]["tokens"]).tolist() for i in range(len(source[split])))
        assert got == sorted(recs)
        assert source[split][0]["source"] in (split, split.encode())
    assert "tensorflow" not in sys.modules
