"""The one decoding path: ``prefill`` and ``decode_step`` over a KV cache, and the loops over them.

``generate`` runs a batch of prompts (different lengths, right-padded with segment 0)
through one jitted prefill and one jitted ``lax.while_loop`` of ``decode_step`` that ends
when every row is done; ``stream_generate`` drives the same ``decode_step`` from the host
and yields tokens as they come. Shapes are bucketed (batch, prompt length and token budget
rounded up to powers of two) so repeated calls reuse compiled executables; compile time
is measured separately from run time. Evaluation, agents, chat and the serving engine all
call these functions; nothing else decodes. Scheduling of requests is not done here.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from intern_jax.config import ModelConfig
from intern_jax.inference import sampling as smp
from intern_jax.inference.sampling import NO_TOKEN, SamplingParams
from intern_jax.model import internlm2

__all__ = [
    "GenerationResult", "bucket", "decode_step", "generate", "generate_text", "grow_cache",
    "prefill", "prepare_params", "stream_generate",
]


def bucket(n: int, minimum: int = 16) -> int:
    """``n`` rounded up to a power of two, at least ``minimum``."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def prepare_params(params, cfg: ModelConfig):
    """``(params, cfg)`` laid out for fast decoding; same model, same outputs.

    Layers become a list of per-layer trees (the cached forward then reads each weight in
    place instead of copying its slice out of the stacked array every step), and a tied
    output head gets its own ``[E, V]`` copy (a plain matrix-vector product per token).
    Costs one extra copy of the embedding; drop the original params if memory is tight.
    """
    out = dict(params)
    if isinstance(params["layers"], dict):
        out["layers"] = [jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(cfg.num_layers)]
    if cfg.tie_word_embeddings:
        out["output"] = jnp.transpose(params["tok_embeddings"])
        cfg = dataclasses.replace(cfg, tie_word_embeddings=False)
    return out, cfg


# ---------------------------------------------------------------------------
# The two jitted building blocks


def _prefill(params, batch, cache, cfg: ModelConfig):
    """Append ``batch`` to the cache; return the logits ``[B, V]`` at each row's last real token.

    ``batch``: ``tokens [B, T]``, ``segment_ids [B, T]`` (right padding = 0, default all 1)
    and optionally ``positions [B, T]`` (default: continuing after each row's cached tokens).
    """
    tokens = batch["tokens"]
    b, t = tokens.shape
    segment_ids = batch.get("segment_ids")
    if segment_ids is None:
        segment_ids = jnp.ones((b, t), jnp.int32)
    positions = batch.get("positions")
    if positions is None:
        positions = cache["lengths"][:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    logits, cache = internlm2.forward(
        params, {"tokens": tokens, "positions": positions, "segment_ids": segment_ids}, cfg, cache
    )
    last = jnp.maximum(jnp.sum(segment_ids != 0, axis=1) - 1, 0)
    return jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0], cache


def _decode_step(params, tokens, cache, state, cfg: ModelConfig):
    """Feed each row's last token ``[B]``, sample the next one; rows that are done feed padding.

    Returns ``(next_tokens [B], cache, state)``; finished rows emit ``NO_TOKEN``. A row whose
    cache is full finishes (reason "length"). Positions continue after the cached tokens.
    """
    capacity = cache["segment_ids"].shape[1]
    done = state["done"] | (cache["lengths"] >= capacity)
    state = {**state, "done": done}
    batch = {
        "tokens": jnp.maximum(tokens, 0)[:, None],
        "positions": cache["lengths"][:, None],
        "segment_ids": (~done).astype(jnp.int32)[:, None],
    }
    logits, cache = internlm2.forward(params, batch, cfg, cache)
    next_tokens, state = smp.sample(logits[:, 0], state)
    return next_tokens, cache, state


prefill = jax.jit(_prefill, static_argnames=("cfg",), donate_argnames=("cache",))
decode_step = jax.jit(_decode_step, static_argnames=("cfg",), donate_argnames=("cache", "state"))


def _start(params, batch, cache, state, cfg: ModelConfig):
    """Prefill and sample each row's first token."""
    logits, cache = _prefill(params, batch, cache, cfg)
    tokens, state = smp.sample(logits, state)
    return tokens, cache, state


def _decode_loop(params, tokens, cache, state, cfg: ModelConfig, num_steps: int):
    """Up to ``num_steps`` decode steps in one ``while_loop``; stops early once all rows are done.

    Returns ``out [B, num_steps]`` (``NO_TOKEN`` where nothing was emitted), cache, state.
    """
    out = jnp.full((tokens.shape[0], num_steps), NO_TOKEN, jnp.int32)

    def cond(carry):
        i, _, _, state, _ = carry
        return (i < num_steps) & ~jnp.all(state["done"])

    def body(carry):
        i, tokens, cache, state, out = carry
        tokens, cache, state = _decode_step(params, tokens, cache, state, cfg)
        out = jax.lax.dynamic_update_slice(out, tokens[:, None], (0, i))
        return i + 1, tokens, cache, state, out

    _, _, cache, state, out = jax.lax.while_loop(cond, body, (jnp.int32(0), tokens, cache, state, out))
    return out, cache, state


# ---------------------------------------------------------------------------
# Compiled executables, keyed by what they were compiled for


_EXECUTABLES: collections.OrderedDict = collections.OrderedDict()
_MAX_EXECUTABLES = 64


def _signature(args):
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in leaves)


def _executable(fn: Callable, static: dict, donate: tuple[int, ...], *args) -> tuple[Callable, float]:
    """``fn`` compiled ahead of time for these argument shapes; also the seconds spent compiling (0 if cached)."""
    key = (fn, tuple(sorted(static.items())), donate, _signature(args))
    exe = _EXECUTABLES.get(key)
    if exe is not None:
        _EXECUTABLES.move_to_end(key)
        return exe, 0.0
    t0 = time.perf_counter()
    exe = jax.jit(partial(fn, **static), donate_argnums=donate).lower(*args).compile()
    seconds = time.perf_counter() - t0
    _EXECUTABLES[key] = exe
    if len(_EXECUTABLES) > _MAX_EXECUTABLES:
        _EXECUTABLES.popitem(last=False)
    return exe, seconds


# ---------------------------------------------------------------------------
# Batches of prompts


@dataclasses.dataclass
class GenerationResult:
    """Generated tokens per prompt (prompt excluded; a final stop token included) and timings."""

    tokens: list[list[int]]
    finish_reasons: list[str]  # "stop" | "length"
    prompt_lengths: list[int]
    prefill_s: float = 0.0
    decode_s: float = 0.0
    compile_s: float = 0.0
    cache: dict | None = dataclasses.field(default=None, repr=False)

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


def grow_cache(cache: dict, max_len: int) -> dict:
    """The same cache with room for ``max_len`` tokens per row (contents kept)."""
    old = cache["segment_ids"].shape[1]
    if max_len <= old:
        return cache
    pad = max_len - old

    def widen(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        return jnp.pad(x, widths)

    return {
        **cache,
        "k": widen(cache["k"], 2),
        "v": widen(cache["v"], 2),
        "segment_ids": widen(cache["segment_ids"], 1),
        "positions": widen(cache["positions"], 1),
    }


class _Timer:
    """Accumulates wall-clock seconds over ``with`` blocks."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self._t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._t0


@dataclasses.dataclass
class _Plan:
    n: int  # real rows
    batch: dict  # tokens, segment_ids [B, T]
    cache: dict
    state: dict
    num_steps: int  # decode steps after the first token
    prompt_lengths: list[int]


def _plan(params, cfg: ModelConfig, prompts, sampling, cache) -> _Plan:
    prompts = [list(map(int, p)) for p in prompts]
    n = len(prompts)
    if n == 0:
        raise ValueError("generate() needs at least one prompt")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token (e.g. BOS)")
        bad = [t for t in p if not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids {bad[:5]} outside the vocabulary [0, {cfg.vocab_size})")
    rows = smp.per_row(sampling, n)
    if cache is None:
        b = bucket(n, 1)
        used = np.zeros(b, np.int64)
    else:
        b = cache["lengths"].shape[0]
        if b != n:
            raise ValueError(f"the cache has {b} rows but {n} prompts were given")
        used = np.asarray(cache["lengths"]).astype(np.int64)

    context = cfg.max_position_embeddings
    lengths = [len(p) for p in prompts]
    budgets = []
    for i, (p_len, u, r) in enumerate(zip(lengths, used, rows)):
        if u + p_len >= context:
            held = f" after {u} cached tokens" if u else ""
            raise ValueError(
                f"prompt {i} has {p_len} tokens{held}, but the model's context is {context} tokens "
                f"(max_position_embeddings), leaving no room to generate; shorten the prompt to at most "
                f"{context - 1 - u} tokens"
            )
        budgets.append(min(r.max_new_tokens, context - int(u) - p_len))

    # Padding rows: one token, no budget; they are done from the start.
    rows = rows + [SamplingParams(max_new_tokens=0)] * (b - n)
    budgets = budgets + [0] * (b - n)
    lengths_padded = lengths + [1] * (b - n)
    t = bucket(max(lengths))
    tokens = np.zeros((b, t), np.int32)
    segment_ids = np.zeros((b, t), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    for i, p_len in enumerate(lengths_padded):
        segment_ids[i, :p_len] = 1
    steps = bucket(max(budgets))
    if cache is None:
        cache = internlm2.init_cache(cfg, b, t + steps)
    else:
        cache = grow_cache(cache, bucket(int(used.max()) + t + steps))
    state = smp.init_state(
        rows, cfg.vocab_size, tokens, segment_ids, budgets,
        stop_width=bucket(max(len(r.stop_ids) for r in rows), 4),
    )
    batch = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(segment_ids)}
    return _Plan(n, batch, cache, state, steps - 1, lengths)


def _finish_reasons(state, n) -> list[str]:
    stopped = np.asarray(state["stopped"])[:n]
    return ["stop" if s else "length" for s in stopped]


def generate(
    params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    *,
    cache: dict | None = None,
) -> GenerationResult:
    """Continue each prompt (token ids) under ``sampling`` (one for all rows or one per row).

    With ``cache`` (from a previous result), the prompts are appended after each row's cached
    tokens; the updated cache is returned in the result either way. A prompt that does not
    fit the context raises ``ValueError``; budgets are clamped to the context otherwise.
    """
    plan = _plan(params, cfg, prompts, sampling, cache)
    start, compile_start = _executable(_start, {"cfg": cfg}, (2, 3), params, plan.batch, plan.cache, plan.state)
    t0 = time.perf_counter()
    first, cache, state = start(params, plan.batch, plan.cache, plan.state)
    first = np.asarray(first)
    prefill_s = time.perf_counter() - t0

    loop, compile_loop = _executable(
        _decode_loop, {"cfg": cfg, "num_steps": plan.num_steps}, (2, 3), params, first, cache, state
    )
    t0 = time.perf_counter()
    out, cache, state = loop(params, jnp.asarray(first), cache, state)
    out = np.asarray(out)
    decode_s = time.perf_counter() - t0

    all_tokens = np.concatenate([first[:, None], out], axis=1)[: plan.n]
    tokens = [[int(x) for x in row if x != NO_TOKEN] for row in all_tokens]
    return GenerationResult(
        tokens, _finish_reasons(state, plan.n), plan.prompt_lengths,
        prefill_s=prefill_s, decode_s=decode_s, compile_s=compile_start + compile_loop, cache=cache,
    )


def stream_generate(
    params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    *,
    cache: dict | None = None,
) -> Iterator[list[int | None]]:
    """Like ``generate``, but yields after every step one entry per prompt: the new token, or
    None for a row that has finished. The generator's return value is the ``GenerationResult``.
    """
    plan = _plan(params, cfg, prompts, sampling, cache)
    start, compile_s = _executable(_start, {"cfg": cfg}, (2, 3), params, plan.batch, plan.cache, plan.state)
    t0 = time.perf_counter()
    tokens, cache, state = start(params, plan.batch, plan.cache, plan.state)
    step_tokens = np.asarray(tokens)
    prefill_s = time.perf_counter() - t0
    collected = [[] for _ in range(plan.n)]

    def emit(step_tokens):
        row_tokens = [None if t == NO_TOKEN else int(t) for t in step_tokens[: plan.n]]
        for row, t in zip(collected, row_tokens):
            if t is not None:
                row.append(t)
        return row_tokens

    yield emit(step_tokens)
    step, compile_step = _executable(_decode_step, {"cfg": cfg}, (2, 3), params, tokens, cache, state)
    compile_s += compile_step
    decode_s = 0.0
    for _ in range(plan.num_steps):
        if bool(np.all(np.asarray(state["done"]))):
            break
        t0 = time.perf_counter()
        tokens, cache, state = step(params, tokens, cache, state)
        step_tokens = np.asarray(tokens)
        decode_s += time.perf_counter() - t0
        yield emit(step_tokens)
    return GenerationResult(
        collected, _finish_reasons(state, plan.n), plan.prompt_lengths,
        prefill_s=prefill_s, decode_s=decode_s, compile_s=compile_s, cache=cache,
    )


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


def generate_text(model, messages_or_prompt, sampling: SamplingParams | None = None, *,
                  system: str | None = None, on_text: Callable[[str], None] | None = None):
    """Generate text for one prompt or chat with a loaded model (``config``, ``params``, ``tokenizer``).

    Stop ids default to the tokenizer's. Text is decoded incrementally (``on_text`` receives
    each piece as it comes); the stop token itself is not part of the text.
    Returns ``(text, GenerationResult)``.
    """
    from intern_jax.tokenizer import StreamDecoder

    tok = model.tokenizer
    ids = encode_prompt(tok, messages_or_prompt, system)
    sampling = sampling or SamplingParams()
    if not sampling.stop_ids:
        sampling = dataclasses.replace(sampling, stop_ids=default_stop_ids(tok))
    stops = set(sampling.stop_ids)
    decoder = StreamDecoder(tok)
    pieces = []
    stream = stream_generate(model.params, model.config, [ids], sampling)
    while True:
        try:
            (token,) = next(stream)
        except StopIteration as finished:
            result = finished.value
            break
        if token is None or token in stops:
            continue
        piece = decoder.push(token)
        if piece:
            pieces.append(piece)
            if on_text:
                on_text(piece)
    tail = decoder.flush()
    if tail:
        pieces.append(tail)
        if on_text:
            on_text(tail)
    return "".join(pieces), result
