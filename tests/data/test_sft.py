"""SFT data: loss masks on templated conversations (golden spans), formats, bad rows, packing."""

import copy
import json

import numpy as np
import pytest

from intern_jax.data import sft

WEATHER = [
    {"role": "system", "content": "You are a weather bot."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "content": "{\"temp_c\": 21}"},
    {"role": "assistant", "content": "It is 21 °C in Paris."},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You're welcome!", "loss": False},
]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from intern_jax.checkpoint import embedded_model_path
    from intern_jax.tokenizer import Tokenizer

    return Tokenizer.from_gguf(embedded_model_path())


def _runs(tok, example):
    """Decoded text of the maximal runs of learned and not-learned tokens, in order."""
    ids, loss = example["tokens"], example["token_loss"] > 0
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or loss[i] != loss[start]:
            runs.append((bool(loss[start]), tok.decode(ids[start:i])))
            start = i
    return runs


def test_chatml_loss_covers_exactly_assistant_tokens_with_an_inlined_tool_call(smollm2_tokenizer):
    example = sft.render_messages(smollm2_tokenizer, WEATHER)
    assert _runs(smollm2_tokenizer, example) == [
        (False, "<|im_start|>system\nYou are a weather bot.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
                "<|im_start|>assistant\n"),
        (True, "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
               "</tool_call><|im_end|>"),
        (False, "\n<|im_start|>tool\n{\"temp_c\": 21}<|im_end|>\n<|im_start|>assistant\n"),
        (True, "It is 21 °C in Paris.<|im_end|>"),
        (False, "\n<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\nYou're welcome!<|im_end|>\n"),
    ]


def test_internlm2_loss_covers_exactly_assistant_tokens_with_a_plugin_call(smollm2_tokenizer):
    tok = copy.copy(smollm2_tokenizer)
    tok.chat_template = None  # the InternLM2 template, which renders tool calls itself
    example = sft.render_messages(tok, WEATHER)
    bos = tok.id_to_token(tok.bos_id)
    assert _runs(tok, example) == [
        (False, f"{bos}<|im_start|>system\nYou are a weather bot.<|im_end|>\n<|im_start|>user\nWeather in Paris?"
                "<|im_end|>\n<|im_start|>assistant\n"),
        (True, "Let me check.<|action_start|><|plugin|>\n{\"name\": \"get_weather\", \"parameters\": "
               "{\"city\": \"Paris\"}}<|action_end|>\n<|im_end|>"),
        (False, "\n<|im_start|>environment name=<|plugin|>\n{\"temp_c\": 21}<|im_end|>\n<|im_start|>assistant\n"),
        (True, "It is 21 °C in Paris.<|im_end|>"),
        (False, "\n<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\nYou're welcome!<|im_end|>\n"),
    ]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_file_reports_bad_rows_with_line_numbers_and_reasons(tmp_path, smollm2_tokenizer):
    good = json.dumps({"messages": WEATHER[:5]})
    path = _write(tmp_path / "chat.jsonl", [
        good,                                                                        # 1
        "{not json",                                                                 # 2
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),               # 3
        "",                                                                          # 4 (blank: ignored)
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),               # 5
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"},
                                 {"role": "assistant", "content": "a"}]}),           # 6
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]}),  # 7
        json.dumps({"prompt": "old format"}),                                        # 8
        good,                                                                        # 9
    ])
    stats, bad = sft.check_file(path, tokenizer=smollm2_tokenizer)
    assert [line for line, _ in bad] == [2, 3, 5, 6, 7, 8]
    reasons = dict(bad)
    assert reasons[2].startswith("invalid JSON")
    assert "robot" in reasons[3] and "nothing to learn" in reasons[5] and "orphan tool result" in reasons[6]
    assert "not valid JSON" in reasons[7] and "'messages'" in reasons[8]
    assert stats.rows == 8 and stats.kept == 2 and sum(stats.skipped.values()) == 6


def test_alpaca_json_array_rows_keep_their_line_numbers(tmp_path, smollm2_tokenizer):
    items = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
             {"instruction": "", "output": "x"},
             {"instruction": "Translate", "input": "chat", "output": "cat"}]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(items, indent=2))
    starts = [i + 1 for i, line in enumerate(path.read_text().split("\n")) if line == "  {"]
    stats, bad = sft.check_file(path, tokenizer=smollm2_tokenizer)
    assert bad == [(starts[1], "bad alpaca row: 'instruction' must be a non-empty string")]
    rows = list(sft.read_rows(path))
    messages, _ = sft.row_messages(rows[2], "alpaca")
    assert messages == [{"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"}]


def test_plain_text_documents_are_learned_whole_with_bos_and_eos(tmp_path, smollm2_tokenizer):
    tok = smollm2_tokenizer
    path = tmp_path / "corpus.txt"
    path.write_text("First document,\nsecond line.\n\n\nSecond document.\n")
    rows = list(sft.read_rows(path))
    assert [(r.line, r.value["text"]) for r in rows] == [(1, "First document,\nsecond line."), (5, "Second document.")]
    ex = sft.render_text(tok, rows[1].value["text"])
    assert ex["tokens"].tolist() == [tok.bos_id, *tok.encode("Second document."), tok.eos_id]
    assert ex["token_loss"].all()


def test_packed_batches_learn_only_assistant_targets(tmp_path, smollm2_tokenizer):
    tok = smollm2_tokenizer
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        a, b = (int(x) for x in rng.integers(0, 100, 2))
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                              {"role": "assistant", "content": f"{a + b}. Row {i}."}]}))
    path = _write(tmp_path / "sums.jsonl", lines)
    cfg = sft.SFTDataConfig(path=str(path), batch_size=2, seq_len=96, system="Be brief.")
    it, stats = sft.make_sft_iterator(cfg, tok)
    assert stats.kept == 12
    batch = next(it)
    assert batch["tokens"].shape == (2, 96)
    learned = batch["targets"][batch["loss_mask"] > 0]
    text = tok.decode(learned)
    assert "Row" in text and "plus" not in text and "Be brief" not in text and "assistant" not in text
    assert (learned == tok.token_to_id("<|im_end|>")).sum() == text.count("Row")
    # every packed conversation ends with its learned <|im_end|> and predicts nothing beyond its segment
    seg = batch["segment_ids"]
    last = np.zeros_like(seg, bool)
    last[:, :-1] = (seg[:, 1:] != seg[:, :-1]) & (seg[:, :-1] > 0)
    last[:, -1] = seg[:, -1] > 0
    assert not batch["loss_mask"][last].any()


def test_check_dataset_script_prints_file_line_reason_and_fails(tmp_path, capsys):
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "check_dataset.py"
    main = runpy.run_path(str(script))["main"]
    path = _write(tmp_path / "d.jsonl", [json.dumps({"messages": WEATHER[:2] + [WEATHER[4]]}), "[1, 2"])
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: invalid JSON" in out and "1/2 rows kept" in out
    assert main([str(_write(tmp_path / "ok.jsonl", [json.dumps({"messages": WEATHER[:2] + [WEATHER[4]]})]))]) == 0
    assert main([str(tmp_path / "missing.jsonl")]) == 2
