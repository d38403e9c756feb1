"""Per-document stages against hand-computed cases and brute-force recomputations."""

import collections
import gzip
import json
import random

import numpy as np
import pytest

from intern_jax.data.processing import filters, language, normalise, pii, readers
from intern_jax.data.processing.config import FilterConfig, LanguageConfig, NormaliseConfig, PiiConfig, ReaderConfig
from intern_jax.data.processing.documents import Document, StageStats


def test_words_split_han_characters_and_whitespace_tokens():
    assert filters.words("Hello, world  foo") == ["Hello,", "world", "foo"]
    assert filters.words("我爱Python编程!") == ["我", "爱", "Python", "编", "程", "!"]


def test_gopher_signals_on_hand_computed_cases():
    ws = "a bb ccc dddd".split()
    assert filters.mean_word_length(ws) == 2.5
    assert filters.symbol_to_word_ratio("# x ... y", "# x ... y".split()) == 2 / 4
    digits, symbols = filters.char_fractions("ab12!?")
    assert digits == pytest.approx(2 / 6) and symbols == pytest.approx(2 / 6)
    assert filters.alpha_word_fraction(["abc", "123", "a1", "--"]) == 0.5
    lines, chars = filters.duplicate_line_fractions("aa\nbbbb\naa\n\naa")
    assert lines == pytest.approx(2 / 4) and chars == pytest.approx(4 / 10)
    # "x y" occurs twice among the bigrams of x y x y z: 2 * 2 chars of 5 word chars
    assert filters.top_ngram_char_fraction("x y x y z".split(), 2) == pytest.approx(4 / 5)
    assert filters.top_ngram_char_fraction("a b c d".split(), 2) == 0.0


def _brute_duplicate_ngram_fraction(ws, n):
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    covered = set()
    for i, g in enumerate(grams):
        if grams.count(g) > 1:
            covered.update(range(i, i + n))
    return sum(len(ws[i]) for i in covered) / sum(map(len, ws))


def test_duplicate_ngram_fraction_matches_brute_force_on_random_texts(seed):
    rng = random.Random(seed)
    for _ in range(50):
        ws = [rng.choice(["a", "bb", "ccc", "dd", "e"]) for _ in range(rng.randint(6, 40))]
        for n in (2, 3, 5):
            assert filters.duplicate_ngram_char_fraction(ws, n) == pytest.approx(_brute_duplicate_ngram_fraction(ws, n))


def _prose(rng, n):
    vocab = ["river", "mountain", "people", "history", "garden", "machine", "language", "music", "winter",
             "station", "between", "quickly", "because", "another", "without", "morning", "science", "window"]
    return " ".join(rng.choice(vocab) for _ in range(n)) + "."


def test_prose_rules_name_the_reason():
    cfg = FilterConfig()
    rng = random.Random(0)
    assert filters.prose_drop_reason(_prose(rng, 120), "en", cfg) is None
    assert filters.prose_drop_reason("short text", "en", cfg) == "too_short"
    assert filters.prose_drop_reason("supercalifragilistic " * 30, "en", cfg) == "mean_word_length"
    assert filters.prose_drop_reason("# " + " # ".join(_prose(rng, 60).split()), "en", cfg) == "symbol_to_word_ratio"
    assert filters.prose_drop_reason(" ".join(["the cat sat"] * 40), "en", cfg) == "duplicate_lines" or \
        filters.prose_drop_reason(" ".join(["the cat sat"] * 40), "en", cfg) == "top_ngram_repetition"
    assert filters.prose_drop_reason(_prose(rng, 100) + " lorem ipsum", "en", cfg) == "blocklist"
    assert filters.prose_drop_reason(_prose(rng, 100) + " xxxl", "en", cfg) is None  # whole words only


def test_blocklist_drops_web_spam_but_not_programmer_markers_or_identifiers(seed):
    cfg = FilterConfig()
    rng = random.Random(seed)
    for spam in ("Watch free XXX videos here", "the best porn site", "XXX\n  Movies all night", "色情网站"):
        assert filters.blocklisted(spam, cfg.blocklist), spam
        assert filters.prose_drop_reason(_prose(rng, 80) + " " + spam, "en", cfg) == "blocklist"
    for technical in ("XXX TO DO: reparse when the source changed", "#defines of CO_xxx flags",
                      "XXX: provide complete list of token types", "set porn_filter=True", "0xXXX"):
        assert filters.blocklisted(technical, cfg.blocklist) is None, technical
    code = Document("c", "def kill(pid):\n    # XXX porn filter, lorem ipsum\n    return execute(pid)\n" * 3,
                    "m.py", "code")
    assert [d.id for d in filters.quality_filter([code], cfg, StageStats("filter"))] == ["c"]


STDLIB_XXX_DOCSTRINGS = ("dbm/dumb.py", "http/server.py", "http/cookiejar.py", "email/headerregistry.py",
                         "email/_header_value_parser.py", "__future__.py", "idlelib/run.py", "idlelib/config.py")


def test_stdlib_docstrings_with_xxx_markers_are_not_blocklisted():
    from intern_jax.data import corpus

    cfg = corpus.corpus_config().filters
    checked = 0
    for name in STDLIB_XXX_DOCSTRINGS:
        path = corpus.stdlib_dir() / name
        if not path.is_file():
            continue
        text = corpus.module_docstrings(path)
        assert "xxx" in text.lower(), name  # the marker that used to drop it is still there
        assert filters.blocklisted(text, cfg.blocklist) is None, name
        assert filters.prose_drop_reason(text, "en", cfg) != "blocklist", name
        checked += 1
    assert checked >= 4


def test_chinese_is_not_dropped_for_having_no_spaces():
    text = ("北京是中华人民共和国的首都，也是全国的政治中心和文化中心。这座城市有三千多年的历史，"
            "保存着大量的古代建筑，例如故宫、天坛和颐和园。每年都有很多游客来这里参观学习。")
    assert filters.prose_drop_reason(text, "zh", FilterConfig()) is None
    assert filters.prose_drop_reason(text * 3, "zh", FilterConfig()) == "duplicate_ngram_repetition"


def test_normalise_nfkc_controls_whitespace_and_mojibake():
    cfg = NormaliseConfig()
    assert normalise.normalise_text("ｆｕｌｌ\u00a0 width\x07  text\r\n\n\n\nnext", cfg) == "full width text\n\nnext"
    assert normalise.normalise_text("cafÃ©", cfg) == "café"  # ftfy repairs UTF-8 read as Latin-1
    code = "def f():\n    return 'ｆ'  \n"
    assert normalise.normalise_text(code, cfg, code=True) == "def f():\n    return 'ｆ'"  # indentation kept


@pytest.mark.parametrize("text,lang", [
    ("The committee will publish its final report on the economic situation next month.", "en"),
    ("我们明天早上八点在火车站见面，然后一起去博物馆参观新的展览。", "zh"),
    ("Le gouvernement a annoncé de nouvelles mesures pour soutenir les petites entreprises.", "fr"),
    ("Die Regierung hat neue Maßnahmen zur Unterstützung kleiner Unternehmen angekündigt.", "de"),
    ("El gobierno anunció nuevas medidas para apoyar a las pequeñas empresas del país.", "es"),
])
def test_langid_keeps_english_and_chinese_and_drops_other_languages(text, lang):
    stats = StageStats("language")
    kept = list(language.identify_language([Document("d", text, "p")], LanguageConfig(), stats))
    assert language.classify(text)[0] == lang
    if lang in ("en", "zh"):
        assert [d.source for d in kept] == [lang]
    else:
        assert not kept and stats.drops == {f"language_{lang}": 1}


def test_code_is_routed_by_extension_and_by_shape():
    snippet = "import os\n\ndef main(argv):\n    for a in argv:\n        print(a)\n    return 0\n"
    stats = StageStats("language")
    docs = [Document("a", "plain words " * 10, "x.py", is_code=True), Document("b", snippet, "x.jsonl:1")]
    assert [d.source for d in language.identify_language(docs, LanguageConfig(), stats)] == ["code", "code"]
    assert stats.counts["routed_as_code"] == 1
    assert not language.looks_like_code("This is a sentence.\nAnother one here.\n" * 4)


def test_pii_is_replaced_and_counted():
    text = ("Write to jane.roe@mail.example.org or call +44 20 7946 0958 / (415) 555-0132 / 13812345678. "
            "Server 93.184.216.34, local 192.168.1.1, v6 2001:db8:85a3::8a2e:370:7334, version 3.11.2, a::b.")
    out, found = pii.scrub_text(text, PiiConfig())
    assert "jane.roe" not in out and "7946" not in out and "555-0132" not in out and "13812345678" not in out
    assert "93.184.216.34" not in out and "192.168.1.1" in out and "3.11.2" in out and "a::b" in out
    assert found == {"email": 1, "phone": 3, "ip_address": 1}  # 2001:db8:: is documentation space: kept
    assert out.count("<PHONE>") == 3 and out.count("<EMAIL>") == 1


def test_readers_count_bad_records_and_keep_every_good_one(tmp_path):
    good = [f"good document {i} " + "é中" * i for i in range(20)]
    lines = [json.dumps({"text": t}).encode() for t in good]
    lines.insert(3, b"{not json")
    lines.insert(7, json.dumps({"body": "no text field"}).encode())
    lines.insert(9, b'{"text": "' + b"\xff\xfe" * 50 + b'"}')  # mostly undecodable
    lines.insert(11, b'{"text": "one bad byte \xff' + b"in a long line " * 10 + b'"}')
    lines.insert(12, b"")
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gzipped"}) + "\n")
    (tmp_path / "c.md").write_text("# Title\n\nSome markdown.")
    (tmp_path / "d.bin").write_bytes(b"\x00\x01")
    cfg, stats = ReaderConfig(), StageStats("read")
    files = readers.list_inputs([tmp_path, tmp_path / "missing.jsonl"], cfg, stats)
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.jsonl", "b.jsonl.gz", "c.md"]
    docs = [d for f in files for d in readers.read_file(f, cfg, stats)]
    texts = [d.text for d in docs]
    assert [t for t in texts if t.startswith("good document")] == good and "gzipped" in texts
    assert "# Title\n\nSome markdown." in texts
    assert "one bad byte \ufffd" + "in a long line " * 10 in texts
    assert stats.drops == collections.Counter(
        {"malformed_json": 1, "missing_text_field": 1, "invalid_utf8": 1, "missing_path": 1})
    assert stats.counts["invalid_utf8_bytes_replaced"] == 1


def test_unreadable_file_is_counted_not_raised(tmp_path):
    path = tmp_path / "notes.txt"
    path.mkdir()  # exists, named like text, cannot be read as a file
    stats = StageStats("read")
    assert list(readers.read_file(str(path), ReaderConfig(), stats)) == []
    assert stats.drops == {"unreadable_file": 1}
    stats = StageStats("read")
    assert list(readers.read_file(str(tmp_path / "gone.txt"), ReaderConfig(), stats)) == []
    assert stats.drops == {"missing_file": 1}


def test_html_main_text_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    body = " ".join(["The harbour town grew around its fishing fleet and old stone market."] * 3)
    html = (f"<html><head><title>t</title></head><body><nav>Home | About | Login</nav>"
            f"<article><h1>Harbour</h1><p>{body}</p><p>{body.upper()}</p></article>"
            "<footer>Copyright 2024</footer></body></html>")
    (tmp_path / "page.html").write_text(html)
    rows = [f"row {i} " + "text " * i for i in range(7)] + [None]
    pq.write_table(pa.table({"text": rows}), tmp_path / "t.parquet")
    stats = StageStats("read")
    docs = list(readers.read_file(str(tmp_path / "page.html"), ReaderConfig(), stats))
    assert len(docs) == 1 and body in docs[0].text and "Login" not in docs[0].text
    docs = list(readers.read_file(str(tmp_path / "t.parquet"), ReaderConfig(), stats))
    assert [d.text for d in docs] == rows[:-1] and stats.drops == {"missing_text_field": 1}


def test_huge_and_empty_documents_are_dropped_with_reasons():
    stats = StageStats("filter")
    docs = [Document("a", "word " * 500_000, "p", source="en"), Document("b", "", "p", source="en")]
    assert list(filters.quality_filter(docs, FilterConfig(max_chars=1_000_000), stats)) == []
    assert stats.drops == {"too_long": 1, "too_short": 1}
    stats = StageStats("normalise")
    assert list(normalise.normalise([Document("c", " \n\x00\t ", "p")], NormaliseConfig(), stats)) == []
    assert stats.drops == {"empty": 1}
    assert np.isfinite(filters.mean_word_length([]))
