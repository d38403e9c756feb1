"""Tokenizers: one `Tokenizer` over SentencePiece models and Hugging Face `tokenizers`.

Loads tokenizer.model, tokenizer.json or the vocabulary inside a GGUF file; encodes with
special tokens parsed from text, decodes (also token by token), renders chat templates and
SFT loss masks, saves in Hugging Face layout and trains InternLM2-style SentencePiece models.
It does not batch, pad or truncate (data/ does) and never imports torch or transformers.
"""

from __future__ import annotations

import datetime
import functools
import io
import itertools
import json
import os
import re
from pathlib import Path

import jinja2
import sentencepiece as spm
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from sentencepiece import sentencepiece_model_pb2
from tokenizers import processors

from intern_jax.tokenizer_conversion import (
    BYTE_PIECE,
    SP_CONTROL,
    SP_NORMAL,
    SP_UNKNOWN,
    SP_USER_DEFINED,
    byte_level_bpe,
    sentencepiece_to_tokenizers,
)

INTERNLM2_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|action_start|>",
    "<|action_end|>",
    "<|interpreter|>",
    "<|plugin|>",
)

# InternLM2 chat format (InternLM chat_format.md). Tool calls follow InternLM's agent protocol:
# `<|action_start|><|plugin|>\n{"name": ..., "parameters": ...}<|action_end|>\n` for an HF-style
# call {"type": "function", "function": {"name", "arguments"}}, and
# `<|action_start|><|interpreter|>\n{code}<|action_end|>\n` for {"type": "interpreter", "code"}.
# A message's `name` ("plugin" / "interpreter") becomes ` name=<|plugin|>`; role "tool" is an
# environment message from a plugin.
INTERNLM2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'environment' if message['role'] == 'tool' else message['role'] %}"
    "{% if role not in ['system', 'user', 'assistant', 'environment'] %}"
    "{{ raise_exception('InternLM2 chat roles are system/user/assistant/environment, got ' + role) }}"
    "{% endif %}"
    "{% set name = message.get('name') or ('plugin' if message['role'] == 'tool' else none) %}"
    "{{ '<|im_start|>' + role }}"
    "{% if name %}"
    "{{ ' name=' + ('<|' + name + '|>' if name in ['plugin', 'interpreter'] else name) }}"
    "{% endif %}"
    "{{ '\\n' + (message['content'] or '') }}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{% if call['type'] == 'interpreter' %}"
    "{{ '<|action_start|><|interpreter|>\\n' + call['code'] + '<|action_end|>\\n' }}"
    "{% else %}"
    "{% set args = call['function']['arguments'] %}"
    "{{ '<|action_start|><|plugin|>\\n{\"name\": ' + (call['function']['name'] | tojson) }}"
    "{{ ', \"parameters\": ' }}"
    "{{ args if args is string else args | tojson }}{{ '}<|action_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

def _token_str(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class _SentencePieceBackend:
    def __init__(self, proto_bytes: bytes, source: str):
        self.proto_bytes = proto_bytes
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(proto_bytes)
            self.proto = sentencepiece_model_pb2.ModelProto()
            self.proto.ParseFromString(proto_bytes)
        except Exception as e:  # sentencepiece raises RuntimeError / OSError / protobuf DecodeError
            raise ValueError(
                f"{source} is not a valid SentencePiece model ({e}); "
                "expected a tokenizer.model written by sentencepiece"
            ) from e
        self.types = [p.type for p in self.proto.pieces]
        self.special_ids = frozenset(
            i for i, t in enumerate(self.types) if t in (SP_CONTROL, SP_UNKNOWN, SP_USER_DEFINED)
        )
        specials = sorted((self.sp.id_to_piece(i) for i in self.special_ids), key=len, reverse=True)
        self.special_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self.piece_to_special = {self.sp.id_to_piece(i): i for i in self.special_ids}
        spec = self.proto.normalizer_spec
        self.strips_leading_space = spec.add_dummy_prefix or spec.remove_extra_whitespaces

    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def id_to_token(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def token_to_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i) else i

    def encode_with_starts(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and the char offset where each token starts. Text runs between special
        tokens are encoded separately, as InternLM2's own tokenizer does."""
        ids, starts, pos = [], [], 0
        for chunk in self.special_split.split(text) if self.special_split else [text]:
            if chunk in self.piece_to_special:
                ids.append(self.piece_to_special[chunk])
                starts.append(pos)
            elif chunk:
                char_at = [0] * (len(chunk.encode("utf-8")) + 1)
                b = 0
                for c, ch in enumerate(chunk):
                    n = len(ch.encode("utf-8"))
                    char_at[b : b + n] = [c] * n
                    b += n
                char_at[b] = len(chunk)
                for piece in self.sp.encode(chunk, return_type="proto").pieces:
                    ids.append(piece.id)
                    starts.append(pos + char_at[piece.begin])
            pos += len(chunk)
        return ids, starts

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        """Text runs decode with sentencepiece; special tokens are written as their pieces. The
        dummy-prefix space is dropped only at the very start, as Hugging Face's decoders do."""
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        out, start = [], 0
        for end in [*(k for k, i in enumerate(ids) if i in self.special_ids), len(ids)]:
            run = ids[start:end]
            text = self.sp.decode(run)
            if (
                start > 0
                and self.strips_leading_space
                and run
                and self.sp.id_to_piece(run[0]).startswith("▁")
            ):
                text = " " + text
            out.append(text)
            if end < len(ids):
                out.append(self.sp.id_to_piece(ids[end]))
            start = end + 1
        return "".join(out)

    def to_hf(self) -> tokenizers.Tokenizer:
        return sentencepiece_to_tokenizers(
            [p.piece for p in self.proto.pieces],
            [p.score for p in self.proto.pieces],
            self.types,
            unigram=self.proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM,
            add_dummy_prefix=self.proto.normalizer_spec.add_dummy_prefix,
            prepend_scheme="always",
            charsmap=self.proto.normalizer_spec.precompiled_charsmap,
            remove_extra_whitespaces=self.proto.normalizer_spec.remove_extra_whitespaces,
        )


class _HFBackend:
    def __init__(self, tok: tokenizers.Tokenizer):
        self.tok = tok
        added = tok.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        # tokenizers' ByteFallback decoder decodes a run of <0xXX> tokens all or nothing, so a
        # stream may only cut after a token that ends the run.
        uses_byte_fallback = "ByteFallback" in (tok.decoder.__repr__() if tok.decoder else "")
        self.hold_ids = (
            frozenset(i for p, i in tok.get_vocab().items() if BYTE_PIECE.match(p))
            if uses_byte_fallback
            else frozenset()
        )

    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def token_to_id(self, piece: str) -> int | None:
        return self.tok.token_to_id(piece)

    def encode_with_starts(self, text: str) -> tuple[list[int], list[int]]:
        enc = self.tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [s for s, _ in enc.offsets]

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def to_hf(self) -> tokenizers.Tokenizer:
        return self.tok


def _valid_text(text: str) -> str:
    """``text``, or a ValueError when it holds a lone surrogate (undecodable bytes that Python kept as
    U+DC80..U+DCFF, or a JSON ``\\udXXX`` escape): such a string is not Unicode and cannot be encoded."""
    if not isinstance(text, str):
        raise TypeError(f"text to encode must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text holds a lone surrogate (U+{ord(text[e.start]):04X} at character {e.start}), so it is "
                         "not valid Unicode: bytes that were not UTF-8? decode them with errors='replace'") from None
    return text


class Tokenizer:
    """Text <-> token ids for one model, with its special tokens and chat template."""

    def __init__(
        self,
        backend,
        *,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        unk_token=None,
        chat_template=None,
        add_bos_token=False,
    ):
        self._backend = backend
        self._tokens = {
            "bos_token": bos_token,
            "eos_token": eos_token,
            "pad_token": pad_token,
            "unk_token": unk_token,
        }
        ids = {k: (backend.token_to_id(v) if v is not None else None) for k, v in self._tokens.items()}
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            ids["bos_token"],
            ids["eos_token"],
            ids["pad_token"],
            ids["unk_token"],
        )
        self.chat_template = chat_template
        self.add_bos_token = add_bos_token
        im_end = backend.token_to_id("<|im_end|>")
        self.stop_ids = frozenset(i for i in (self.eos_id, im_end) if i is not None)

    # ---- constructors -------------------------------------------------------------------

    @classmethod
    def from_sentencepiece(cls, path, *, config: dict | None = None) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"SentencePiece model {path} does not exist")
        backend = _SentencePieceBackend(path.read_bytes(), str(path))
        sp, config = backend.sp, config or {}

        def piece(i):
            return sp.id_to_piece(i) if 0 <= i < sp.get_piece_size() else None

        return cls(
            backend,
            bos_token=_token_str(config.get("bos_token")) or piece(sp.bos_id()),
            eos_token=_token_str(config.get("eos_token")) or piece(sp.eos_id()),
            pad_token=_token_str(config.get("pad_token")) or piece(sp.pad_id()),
            unk_token=_token_str(config.get("unk_token")) or piece(sp.unk_id()),
            chat_template=_config_chat_template(config),
            add_bos_token=config.get("add_bos_token", True),
        )

    @classmethod
    def from_hf(cls, path, *, config: dict | None = None) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"tokenizer.json {path} does not exist")
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{path} is not a valid Hugging Face tokenizer.json ({e})") from e
        if config is None:
            config = _read_json(path.parent / "tokenizer_config.json")
        vocab = tok.get_vocab()

        def pick(key, *guesses):
            value = _token_str(config.get(key))
            return value if value is not None else next((g for g in guesses if g in vocab), None)

        return cls(
            _HFBackend(tok),
            bos_token=pick("bos_token", "<s>", "<|begin_of_text|>", "<|endoftext|>"),
            eos_token=pick("eos_token", "</s>", "<|end_of_text|>", "<|endoftext|>"),
            pad_token=pick("pad_token"),
            unk_token=pick("unk_token", "<unk>"),
            chat_template=_config_chat_template(config),
            add_bos_token=bool(config.get("add_bos_token", False)),
        )

    @classmethod
    def from_gguf(cls, reader_or_path) -> Tokenizer:
        """Rebuild the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata."""
        import gguf  # noqa: PLC0415  (only needed for GGUF files)

        if isinstance(reader_or_path, gguf.GGUFReader):
            reader, source = reader_or_path, "GGUF reader"
        else:
            source = str(reader_or_path)
            if not Path(source).is_file():
                raise ValueError(f"GGUF file {source} does not exist")
            try:
                reader = gguf.GGUFReader(source)
            except Exception as e:
                raise ValueError(f"{source} is not a readable GGUF file ({e})") from e

        def meta(key, default=None):
            field = reader.fields.get(key)
            return default if field is None else field.contents()

        kind = meta("tokenizer.ggml.model")
        pieces = meta("tokenizer.ggml.tokens")
        if pieces is None:
            raise ValueError(f"{source} has no tokenizer.ggml.tokens; it carries no tokenizer")
        types = meta("tokenizer.ggml.token_type") or [SP_NORMAL] * len(pieces)
        if kind == "gpt2":
            tok = byte_level_bpe(
                pieces, types, meta("tokenizer.ggml.merges") or [], meta("tokenizer.ggml.pre")
            )
        elif kind == "llama":
            scores = meta("tokenizer.ggml.scores") or [0.0] * len(pieces)
            tok = sentencepiece_to_tokenizers(
                pieces,
                scores,
                types,
                unigram=False,
                prepend_scheme="first",
                add_dummy_prefix=meta("tokenizer.ggml.add_space_prefix", True),
            )
        else:
            raise ValueError(f"{source} has tokenizer.ggml.model={kind!r}; supported: 'gpt2', 'llama'")

        def token(key):
            i = meta(key)
            return pieces[i] if i is not None and 0 <= i < len(pieces) else None

        return cls(
            _HFBackend(tok),
            bos_token=token("tokenizer.ggml.bos_token_id"),
            eos_token=token("tokenizer.ggml.eos_token_id"),
            pad_token=token("tokenizer.ggml.padding_token_id"),
            unk_token=token("tokenizer.ggml.unknown_token_id"),
            chat_template=meta("tokenizer.chat_template"),
            add_bos_token=bool(meta("tokenizer.ggml.add_bos_token", kind == "llama")),
        )

    # ---- vocabulary -----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size()

    @property
    def special_ids(self) -> frozenset[int]:
        return self._backend.special_ids

    def token_to_id(self, piece: str) -> int | None:
        return self._backend.token_to_id(piece)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(int(token_id))

    def to_hf(self) -> tokenizers.Tokenizer:
        """This vocabulary as a Hugging Face ``tokenizers.Tokenizer`` (what grammar libraries read)."""
        return self._backend.to_hf()

    # ---- encode / decode ------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids, _ = self._backend.encode_with_starts(_valid_text(text))
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens)

    # ---- chat -----------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render messages with the model's own template, or InternLM2's when it has none."""
        template = _compile_template(self.chat_template or INTERNLM2_CHAT_TEMPLATE)
        specials = {k: v or "" for k, v in self._tokens.items()}
        return template.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **specials, **kwargs
        )

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False):
        """(ids, loss_mask) for a conversation; the mask is True on assistant tokens only.

        Each assistant turn's region runs from the end of the generation prompt before it to its
        last end token (`<|im_end|>`, eos) inclusive, found by rendering growing prefixes of the
        conversation. A message with `"loss": False` stays out of the mask. Tokens are taken from
        one encoding of the full render; a token counts as assistant when its first character is.
        """
        renders = [
            self.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
            for i in range(len(messages))
        ]
        full = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        chain = [*renders, full]
        for a, b in itertools.pairwise(chain):
            if not b.startswith(a):
                raise ValueError(
                    "chat template is not prefix-stable: rendering a conversation changes the text of its "
                    f"earlier turns (render of a shorter prefix ends {a[-60:]!r}, the longer one has "
                    f"{b[max(0, _common_prefix(a, b) - 30) : _common_prefix(a, b) + 30]!r} there); loss "
                    "masks need a template whose earlier turns render the same in any longer conversation"
                )
        end_tokens = [self.id_to_token(i) for i in sorted(self.stop_ids)]
        regions = []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant" or message.get("loss", True) is False:
                continue
            prompt = self.apply_chat_template(messages[:i], add_generation_prompt=True)
            start_min = len(renders[i - 1]) if i else 0
            if not (renders[i].startswith(prompt) and len(prompt) >= start_min):
                raise ValueError(
                    f"chat template is not prefix-stable at message {i}: the generation prompt "
                    f"{prompt[-60:]!r} is not where the assistant turn's render {renders[i][-60:]!r} starts"
                )
            turn = renders[i][len(prompt) :]
            end = max((turn.rfind(t) + len(t) for t in end_tokens if t and t in turn), default=len(turn))
            regions.append((len(prompt), len(prompt) + end))
        ids, starts = self._backend.encode_with_starts(_valid_text(full))
        mask = [any(a <= s < b for a, b in regions) for s in starts]
        return ids, mask

    # ---- files ----------------------------------------------------------------------------

    def save(self, directory) -> None:
        """Write tokenizer.json (+ tokenizer.model for SentencePiece), tokenizer_config.json and
        special_tokens_map.json, loadable by `load_tokenizer` and transformers' AutoTokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tok = tokenizers.Tokenizer.from_str(self._backend.to_hf().to_str())
        bos = self._tokens["bos_token"]
        if self.add_bos_token and bos is not None:
            tok.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, self.bos_id)]
            )
        tok.save(str(directory / "tokenizer.json"))
        if isinstance(self._backend, _SentencePieceBackend):
            (directory / "tokenizer.model").write_bytes(self._backend.proto_bytes)
        named = {k: v for k, v in self._tokens.items() if v is not None}
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **named,
            "add_bos_token": self.add_bos_token,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "chat_template": self.chat_template or INTERNLM2_CHAT_TEMPLATE,
        }
        extra = sorted(
            self.id_to_token(i) for i in self.special_ids if self.id_to_token(i) not in named.values()
        )
        _write_json(directory / "tokenizer_config.json", config)
        _write_json(directory / "special_tokens_map.json", {**named, "additional_special_tokens": extra})


class StreamDecoder:
    """Incremental detokenizer: `push` returns newly completed text, holding back characters
    whose bytes have not all arrived; everything pushed plus `flush` equals `decode(all ids)`."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tokenizer, self._skip = tokenizer, skip_special_tokens
        self._hold_ids = getattr(tokenizer._backend, "hold_ids", frozenset())
        self._ids: list[int] = []
        self._emitted: list[str] = []
        self._prefix = self._read = 0  # ids[prefix:read] is the context already emitted

    def _decode(self, ids):
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def push(self, token_id) -> str:
        self._ids.append(int(token_id))
        if self._ids[-1] in self._hold_ids:
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(before) or text.endswith("\ufffd") or not text.startswith(before):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        self._emitted.append(text[len(before) :])
        return self._emitted[-1]

    def flush(self) -> str:
        """The text still held back; resets the decoder for a new sequence."""
        emitted, full = "".join(self._emitted), self._decode(self._ids)
        self.__init__(self._tokenizer, self._skip)
        return full[len(emitted) :] if full.startswith(emitted) else full[_common_prefix(emitted, full) :]


# ---- loading ---------------------------------------------------------------------------------


def load_tokenizer(path) -> Tokenizer:
    """A directory (tokenizer.json or tokenizer.model, plus tokenizer_config.json), a `.model`
    file, a tokenizer.json or a `.gguf` file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"tokenizer path {path} does not exist; expected a directory with tokenizer.json "
            "or tokenizer.model, a .model file, a tokenizer.json or a .gguf file"
        )
    if path.is_dir():
        config = _read_json(path / "tokenizer_config.json")
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_hf(path / "tokenizer.json", config=config)
        if (path / "tokenizer.model").is_file():
            return Tokenizer.from_sentencepiece(path / "tokenizer.model", config=config)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return Tokenizer.from_gguf(ggufs[0])
        raise ValueError(f"directory {path} has no tokenizer.json, tokenizer.model or single .gguf file")
    if path.suffix == ".gguf":
        return Tokenizer.from_gguf(path)
    if path.suffix == ".json":
        return Tokenizer.from_hf(path)
    if path.suffix == ".model":
        return Tokenizer.from_sentencepiece(path, config=_read_json(path.parent / "tokenizer_config.json"))
    raise ValueError(
        f"cannot tell what tokenizer {path} is; expected a directory, a .model, .json or .gguf file"
    )


def _config_chat_template(config: dict) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    return template


@functools.lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"chat template does not compile: {e} (line {e.lineno})") from e


def _common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ---- training --------------------------------------------------------------------------------


def _training_chunks(input_files, max_bytes: int = 4096):
    """Text in chunks of whole lines (newlines kept, so "\\n" and indentation get pieces)."""
    for name in input_files:
        with open(name, encoding="utf-8") as f:
            chunk, size = [], 0
            for line in f:
                n = len(line.encode("utf-8"))
                if chunk and size + n > max_bytes:
                    yield "".join(chunk)
                    chunk, size = [], 0
                while n > max_bytes:  # one very long line: cut it by characters
                    yield line[: max_bytes // 4]
                    line = line[max_bytes // 4 :]
                    n = len(line.encode("utf-8"))
                chunk.append(line)
                size += n
            if chunk:
                yield "".join(chunk)


def train_sentencepiece(
    input_files,
    model_prefix,
    vocab_size: int,
    *,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    input_sentence_size: int = 1_000_000,
    num_threads: int = 2,
) -> Tokenizer:
    """Train an InternLM2-style SentencePiece model and write `{model_prefix}.model`.

    Byte fallback (no unknown text), digits split one by one, whitespace kept verbatim (no
    dummy prefix, no collapsing, whitespace-only pieces) so code indentation survives, and the
    InternLM2 chat/tool tokens as single pieces. <unk>=0, <s>=1, </s>=2; there is no pad piece
    (pad_id is None: padding is masked by segment ids, its token value is never read).
    """
    files = [str(f) for f in ([input_files] if isinstance(input_files, (str, os.PathLike)) else input_files)]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ValueError(f"training text files do not exist: {missing}")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_chunks(files),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        num_threads=num_threads,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        max_sentence_length=16384,
        user_defined_symbols=list(INTERNLM2_SPECIAL_TOKENS),
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        minloglevel=2,
    )
    path = Path(f"{model_prefix}.model")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return Tokenizer.from_sentencepiece(path)
