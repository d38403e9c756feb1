"""Vocabularies of other formats rebuilt as Hugging Face `tokenizers` objects.

SentencePiece models (BPE or unigram, byte fallback) and GGUF vocabularies (``gpt2``
byte-level BPE with its pre-tokenizer split, ``llama`` SentencePiece-style) become a
`tokenizers.Tokenizer` that encodes identically. Loading and chat templates live in
``intern_jax.tokenizer``.
"""

from __future__ import annotations

import functools
import re

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer splits for `tokenizer.ggml.pre` names (the regex each vocabulary was trained with);
# names not listed keep GPT-2's byte-level split, as transformers does.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_GGUF_PRE_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merges_from_scores(
    pieces: list[str], scores: list[float], vocab: dict[str, int]
) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a piece into two pieces,
    best-scoring result first (ties: longer left, then longer right part, then vocabulary order)."""
    merges = []
    for piece, score in zip(pieces, scores, strict=True):
        splits = [
            (piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab
        ]
        splits.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges.extend(
            (-score, -len(left), -len(right), n, left, right) for n, (left, right) in enumerate(splits)
        )
    merges.sort(key=lambda m: m[:3])
    return [(m[4], m[5]) for m in merges]


def sentencepiece_to_tokenizers(
    pieces,
    scores,
    types,
    *,
    unigram,
    add_dummy_prefix,
    prepend_scheme,
    charsmap=b"",
    remove_extra_whitespaces=False,
) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` equivalent to a SentencePiece model with byte fallback.

    prepend_scheme "always" puts the dummy-prefix space before every text run between special
    tokens (what SentencePiece itself does on each run), "first" only at the very start.
    charsmap is the model's compiled normalization rule (e.g. nmt_nfkc), empty for identity.
    """
    vocab = {p: i for i, p in enumerate(pieces)}
    unk = next((p for p, t in zip(pieces, types, strict=True) if t == SP_UNKNOWN), None)
    if unigram:
        model = models.Unigram(
            [(p, s) for p, s in zip(pieces, scores, strict=True)], unk_id=vocab.get(unk), byte_fallback=True
        )
    else:
        kept = (SP_NORMAL, SP_UNUSED)
        mergeable = [(p, s) for p, s, t in zip(pieces, scores, types, strict=True) if t in kept]
        merges = _merges_from_scores([p for p, _ in mergeable], [s for _, s in mergeable], vocab)
        model = models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    tok = tokenizers.Tokenizer(model)
    steps = [normalizers.Precompiled(charsmap)] if charsmap else []
    if remove_extra_whitespaces:
        steps += [
            normalizers.Strip(left=True, right=True),
            normalizers.Replace(tokenizers.Regex(" {2,}"), " "),
        ]
    if prepend_scheme == "always":  # unlike Metaspace, prepends even when the run starts with a space
        steps += [normalizers.Prepend("▁")] if add_dummy_prefix else []
        steps += [normalizers.Replace(" ", "▁")]
    else:
        scheme = prepend_scheme if add_dummy_prefix else "never"
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    tok.normalizer = normalizers.Sequence(steps) if steps else None
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens(
        [
            tokenizers.AddedToken(p, special=True, normalized=False)
            for p, t in zip(pieces, types, strict=True)
            if t in (SP_CONTROL, SP_UNKNOWN, SP_USER_DEFINED)
        ]
    )
    return tok


def byte_level_bpe(pieces, types, merges, pre) -> tokenizers.Tokenizer:
    alphabet = _byte_alphabet()
    spelled = set(alphabet.values())

    def respell(t):
        return t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8"))

    vocab = {respell(t): i for i, t in enumerate(pieces)}
    pairs = [tuple(m.split(" ")) for m in merges]
    tok = tokenizers.Tokenizer(
        models.BPE(vocab, pairs, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    split = _GGUF_PRE_SPLITS.get(pre)
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [
            tokenizers.AddedToken(t, special=True, normalized=False)
            for t, k in zip(pieces, types, strict=True)
            if k == SP_CONTROL and set(t) <= spelled
        ]
    )
    tok.add_tokens(
        [
            tokenizers.AddedToken(t, special=False, normalized=False)
            for t, k in zip(pieces, types, strict=True)
            if k == SP_USER_DEFINED and t in vocab
        ]
    )
    return tok
