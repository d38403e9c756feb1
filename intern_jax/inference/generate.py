"""``generate`` and ``stream_generate``: batches of prompts through the decoder, the two ways.

``generate`` inserts every prompt into a batch of slots (one prefill over the ragged, right-padded
prompts), then runs the decode steps on the device in one ``while_loop`` that ends when every
row is done; ``stream_generate`` steps the same batch from the host and yields tokens as they come.
Shapes are bucketed (rows, prompt length and step count rounded up to powers of two), so repeated
calls reuse the decoder's compiled functions; compile time is measured apart from run time.
Both take a ``Decoder`` (or a loaded model, for which a decoder is made per call). Scheduling
of requests is the serving engine's; neither function does it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from intern_jax.inference import sampling as smp
from intern_jax.inference.decoder import Decoder, bucket
from intern_jax.inference.sampling import NO_TOKEN, SamplingParams
from intern_jax.inference.stop import StopStrings

__all__ = ["GenerationResult", "encode_prompt", "generate", "generate_text", "stream_generate"]


@dataclasses.dataclass
class GenerationResult:
    """Generated tokens per prompt (prompt excluded; a final stop token included), their
    log-probabilities under the model, and timings."""

    tokens: list[list[int]]
    finish_reasons: list[str]  # "stop" | "length"
    prompt_lengths: list[int]
    prefill_s: float = 0.0
    decode_s: float = 0.0
    compile_s: float = 0.0
    logprobs: list[list[float]] = dataclasses.field(default_factory=list)

    @property
    def num_generated(self) -> list[int]:
        return [len(t) for t in self.tokens]

    @property
    def prefill_tokens_per_s(self) -> float:
        return sum(self.prompt_lengths) / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens from decode steps (each row's first token comes from prefill) per second."""
        decoded = sum(max(n - 1, 0) for n in self.num_generated)
        return decoded / self.decode_s if self.decode_s > 0 else 0.0

    def stats(self) -> dict:
        return {
            "prompt_tokens": sum(self.prompt_lengths),
            "generated_tokens": sum(self.num_generated),
            "prefill_s": round(self.prefill_s, 4),
            "decode_s": round(self.decode_s, 4),
            "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 2),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
            "compile_s": round(self.compile_s, 3),
            "finish_reasons": list(self.finish_reasons),
        }


def check_prompts(prompts, cfg, used: Sequence[int] | None = None) -> list[list[int]]:
    """Prompts as lists of ints, each non-empty, in the vocabulary and leaving room in the context
    after ``used[i]`` cached tokens; a clear ``ValueError`` naming the prompt otherwise."""
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        raise ValueError("generate() needs at least one prompt")
    context = cfg.max_position_embeddings
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token (e.g. BOS)")
        bad = [t for t in p if not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids {bad[:5]} outside the vocabulary [0, {cfg.vocab_size})")
        u = used[i] if used else 0
        if u + len(p) >= context:
            held = f" after {u} cached tokens" if u else ""
            raise ValueError(
                f"prompt {i} has {len(p)} tokens{held}, but the model's context is {context} tokens "
                f"(max_position_embeddings), leaving no room to generate; shorten the prompt to at most "
                f"{context - 1 - u} tokens"
            )
    return prompts


def _start(decoder: Decoder, prompts, sampling):
    """A batch with every prompt inserted: ``(batch, first StepOutput, rows, prefill seconds, compile seconds)``."""
    cfg = decoder.config
    prompts = check_prompts(prompts, cfg)
    rows = smp.per_row(sampling, len(prompts))
    context = cfg.max_position_embeddings
    rows = [dataclasses.replace(r, max_new_tokens=min(r.max_new_tokens, context - len(p)))
            for r, p in zip(rows, prompts)]
    compiled_before = decoder.compile_seconds
    batch = decoder.new_batch(bucket(len(prompts), 1), max(len(p) for p in prompts)
                              + bucket(max(r.max_new_tokens for r in rows)))
    t0 = time.perf_counter()
    first = batch.insert(list(range(len(prompts))), prompts, rows)
    prefill_s = time.perf_counter() - t0
    compile_s = decoder.compile_seconds - compiled_before
    return batch, first, rows, prompts, prefill_s - compile_s, compile_s


def _finish_reasons(batch, n) -> list[str]:
    return ["stop" if s else "length" for s in batch.stopped()[:n]]


def generate(decoder, prompts: Sequence[Sequence[int]],
             sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams()) -> GenerationResult:
    """Continue each prompt (token ids) under ``sampling`` (one for all rows or one per row).

    ``decoder``: a ``Decoder`` (or a loaded model). A prompt that does not fit the context raises
    ``ValueError``; budgets are clamped to the context otherwise.
    """
    decoder = Decoder.from_model(decoder)
    batch, first, rows, prompts, prefill_s, compile_s = _start(decoder, prompts, sampling)
    n = len(prompts)
    steps = bucket(max(r.max_new_tokens for r in rows)) - 1
    compiled_before = decoder.compile_seconds
    t0 = time.perf_counter()
    out = batch.run(steps) if steps > 0 else None
    decode_s = time.perf_counter() - t0
    compile_loop = decoder.compile_seconds - compiled_before
    tokens, logprobs = [], []
    for i in range(n):
        row = [int(first.tokens[i])] if first.tokens[i] != NO_TOKEN else []
        lps = [float(first.logprobs[i])] if row else []
        if out is not None:
            kept = out.tokens[i] != NO_TOKEN
            row += [int(t) for t in out.tokens[i][kept]]
            lps += [float(x) for x in out.logprobs[i][kept]]
        tokens.append(row)
        logprobs.append(lps)
    return GenerationResult(tokens, _finish_reasons(batch, n), [len(p) for p in prompts], prefill_s=prefill_s,
                            decode_s=decode_s - compile_loop, compile_s=compile_s + compile_loop, logprobs=logprobs)


def stream_generate(decoder, prompts: Sequence[Sequence[int]],
                    sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams()
                    ) -> Iterator[list[int | None]]:
    """Like ``generate``, but yields after every step one entry per prompt: the new token, or
    None for a row that has finished. The generator's return value is the ``GenerationResult``.
    """
    decoder = Decoder.from_model(decoder)
    batch, first, rows, prompts, prefill_s, compile_s = _start(decoder, prompts, sampling)
    n = len(prompts)
    collected: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]

    def emit(out):
        step = []
        for i in range(n):
            t = int(out.tokens[i])
            if t == NO_TOKEN:
                step.append(None)
                continue
            collected[i].append(t)
            logprobs[i].append(float(out.logprobs[i]))
            step.append(t)
        return step

    yield emit(first)
    decode_s = 0.0
    for _ in range(max(r.max_new_tokens for r in rows) - 1):
        if bool(np.all(batch.done()[:n])):
            break
        compiled_before = decoder.compile_seconds
        t0 = time.perf_counter()
        out = batch.step()
        spent = decoder.compile_seconds - compiled_before
        compile_s += spent
        decode_s += time.perf_counter() - t0 - spent
        yield emit(out)
    return GenerationResult(collected, _finish_reasons(batch, n), [len(p) for p in prompts], prefill_s=prefill_s,
                            decode_s=decode_s, compile_s=compile_s, logprobs=logprobs)


# ---------------------------------------------------------------------------
# Text in, text out


def encode_prompt(tokenizer, messages_or_prompt, system: str | None = None) -> list[int]:
    """Token ids for a plain prompt (BOS as the tokenizer wants) or a chat (template applied).

    ``messages_or_prompt``: a string, or a list of ``{"role", "content"}`` messages.
    """
    if isinstance(messages_or_prompt, str) and system is None:
        return tokenizer.encode(messages_or_prompt, add_bos=bool(getattr(tokenizer, "add_bos_token", False)))
    messages = messages_or_prompt
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)
    return tokenizer.encode(text, add_bos=False)


def default_stop_ids(tokenizer) -> tuple[int, ...]:
    return tuple(sorted(getattr(tokenizer, "stop_ids", ()) or ()))


def stream_text(batch, slot: int, first, tokenizer, stop_ids, stop_strings: Sequence[str], max_steps: int):
    """Drive ``batch`` for one slot from its first token until it is done or a stop string appears,
    yielding text pieces as they decode. Returns (as the generator's value)
    ``(text, tokens, logprobs, stopped_by_string, decode seconds)``.

    Stop tokens and stop strings are not part of the text; a stop string ends the slot's decoding.
    Every token but the last was fed back into the slot's cache.
    """
    from intern_jax.tokenizer import StreamDecoder

    decoder, stops, pieces = StreamDecoder(tokenizer), StopStrings(stop_strings), []
    tokens, logprobs = [], []
    out, steps, decode_s = first, 0, 0.0
    while True:
        token = int(out.tokens[slot])
        if token != NO_TOKEN:
            tokens.append(token)
            logprobs.append(float(out.logprobs[slot]))
            if token not in stop_ids:
                piece = stops.push(decoder.push(token))
                if piece:
                    pieces.append(piece)
                    yield piece
        if stops.stopped or token == NO_TOKEN or batch.done()[slot] or steps >= max_steps:
            break
        t0 = time.perf_counter()
        out = batch.step()
        decode_s += time.perf_counter() - t0
        steps += 1
    if not stops.stopped:
        for piece in (stops.push(decoder.flush()), stops.flush()):
            if piece:
                pieces.append(piece)
                yield piece
    return "".join(pieces), tokens, logprobs, stops.stopped, decode_s


def generate_text(model, messages_or_prompt, sampling: SamplingParams | None = None, *,
                  system: str | None = None, on_text: Callable[[str], None] | None = None):
    """Generate text for one prompt or chat with a ``Decoder`` (or a loaded model) that has a tokenizer.

    Stop ids default to the tokenizer's; ``sampling.stop`` strings end the text where they first
    appear (they are not part of it). Text is decoded incrementally (``on_text`` receives each
    piece as it comes); the stop token itself is not part of the text.
    Returns ``(text, GenerationResult)``.
    """
    decoder = Decoder.from_model(model)
    tok = decoder.tokenizer
    if tok is None:
        raise ValueError("generate_text needs a model with a tokenizer; use generate() with token ids instead")
    ids = encode_prompt(tok, messages_or_prompt, system)
    sampling = sampling or SamplingParams()
    if not sampling.stop_ids:
        sampling = dataclasses.replace(sampling, stop_ids=default_stop_ids(tok))
    batch, first, rows, prompts, prefill_s, compile_s = _start(decoder, [ids], sampling)
    compiled_before = decoder.compile_seconds
    stream = stream_text(batch, 0, first, tok, set(sampling.stop_ids), sampling.stop, rows[0].max_new_tokens - 1)
    while True:
        try:
            piece = next(stream)
        except StopIteration as end:
            text, tokens, logprobs, by_string, decode_s = end.value
            break
        if on_text:
            on_text(piece)
    spent = decoder.compile_seconds - compiled_before
    reason = "stop" if by_string or batch.stopped()[0] else "length"
    result = GenerationResult([tokens], [reason], [len(ids)], prefill_s=prefill_s, decode_s=decode_s - spent,
                              compile_s=compile_s + spent, logprobs=[logprobs])
    return text, result
