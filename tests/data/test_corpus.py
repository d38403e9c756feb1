"""The embedded standard-library corpus: docstring extraction and a small real build."""

import ast

import pytest

from intern_jax.data import corpus
from intern_jax.data.processing import runner, shards
from intern_jax.tokenizer import load_tokenizer


def test_module_docstrings_match_ast_and_stdlib_sources_skip_tests(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('"""Module doc."""\n\nclass A:\n    """Class doc."""\n\n'
                    '    def f(self):\n        """Method doc."""\n')
    assert corpus.module_docstrings(path) == "Module doc.\n\nClass doc.\n\nMethod doc."
    files = corpus.stdlib_sources(max_bytes=2 << 20)
    assert files and not any(set(f.parts) & corpus.EXCLUDED_DIRS for f in files)
    assert sum(f.stat().st_size for f in files) <= 2 << 20
    sample = next(f for f in files if corpus.module_docstrings(f))
    assert ast.get_docstring(ast.parse(sample.read_text())) in (None, "") or \
        corpus.module_docstrings(sample).startswith(ast.get_docstring(ast.parse(sample.read_text())))


@pytest.mark.slow
def test_build_corpus_writes_shards_that_decode_to_the_cleaned_text(tmp_path):
    stats = corpus.build_corpus(tmp_path, vocab_size=1000, max_code_bytes=600_000, sample_bytes=300_000,
                                progress=False)
    manifest = shards.load_manifest(tmp_path)
    assert {"code", "en"} <= set(manifest["sources"]) and manifest["tokenizer"] == "tokenizer"
    tok = load_tokenizer(tmp_path / manifest["tokenizer"])
    assert tok.vocab_size == manifest["vocab_size"] == 1000
    kept = [d for d in runner.kept_documents(tmp_path) if d.source == "en"]
    first = shards.read_records(tmp_path / manifest["sources"]["en"]["files"][0])[0].tolist()
    assert first[0] == tok.bos_id and first[-1] == tok.eos_id
    assert tok.decode(first[1:-1]) == kept[0].text
    assert stats["stages"]["tokenise"]["docs_out"] == sum(e["documents"] for e in manifest["sources"].values())
    again = corpus.build_corpus(tmp_path, vocab_size=1000, max_code_bytes=600_000, sample_bytes=300_000,
                                progress=False)  # finished: reuses everything
    assert again["manifest"] == stats["manifest"]
