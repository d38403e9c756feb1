"""Scoring: the log-probability of each continuation token given its context, the context run once.

``score_sequences(decoder, sequences, starts)`` is what ``Decoder.score`` does. Sequences are
grouped by their context (every token before the last context token, ``seq[:start - 1]``): a
group's context is prefilled into a dense KV cache once, the cache rows are copied to each of the
group's continuations, and each continuation (the last context token, then its tokens) runs on
top of them. The output head (an ``[E, V]`` matrix product per position, the largest single cost
of a small model with a large vocabulary) runs only at the positions whose next token is scored.
For a multiple-choice item of four options this computes the question once instead of four
times. Batches hold whole groups, longest context first, up to ``batch_size`` continuations
and a bound on cached tokens; every array is padded to a power-of-two bucket so a task compiles a
handful of shapes.

The forward is the model's own cached branch (``internlm2.hidden_states`` with a ``DenseKV``),
the one the decoder's prefill and steps run; this module adds no model code of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from intern_jax.config import ModelConfig
from intern_jax.model import internlm2
from intern_jax.model.kv_cache import DenseKV

# A batch's cache holds at most this many (row, token) slots, rows x (context + continuation), and its
# head runs on at most MAX_SCORED_TOKENS positions, rows x continuation (the float32 logits of 4096
# positions over a 49k vocabulary are 0.8 GB); a single continuation longer than that runs alone.
MAX_CACHED_TOKENS = 1 << 15
MAX_SCORED_TOKENS = 1 << 12


def bucket(n: int, minimum: int) -> int:
    """``n`` rounded up to a power of two, at least ``minimum``."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def _score_rows(params, context, context_segments, row_group, tokens, segments, targets, cfg: ModelConfig,
                int8: bool = False):
    """Log p of ``targets [C, K]`` after ``tokens [C, K]`` (segment 0: padding), each row continuing its
    group's context (``context [G, S]``, row ``c`` belongs to group ``row_group[c]``; ``context`` None:
    no context), over a cache stored as int8 when ``int8``. Returns ``(logprobs [C, K], is_greedy [C, K])``."""
    rows, k = tokens.shape
    if context is None:
        cache = DenseKV.init(cfg, rows, k, int8=int8)
    else:
        cache = DenseKV.init(cfg, context.shape[0], context.shape[1] + k, int8=int8)
        _, cache = internlm2.hidden_states(params, {"tokens": context, "segment_ids": context_segments}, cfg, cache)
        cache = cache.rows(row_group)
    x, _ = internlm2.hidden_states(params, {"tokens": tokens, "segment_ids": segments}, cfg, cache)
    logprobs = jax.nn.log_softmax(internlm2.head_logits(params, x, cfg).astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logprobs, targets[:, :, None], axis=2)[:, :, 0]
    return chosen, jnp.argmax(logprobs, axis=-1) == targets


def plan_batches(sequences: Sequence[Sequence[int]], starts: Sequence[int], batch_size: int,
                 max_cached_tokens: int = MAX_CACHED_TOKENS) -> list[list[list[int]]]:
    """The batches to run: each a list of groups, each group the indices of sequences that share a context
    (``seq[:start - 1]``). Longest context first; a group larger than ``batch_size`` is split."""
    groups: dict[tuple, list[int]] = {}
    for i, (seq, start) in enumerate(zip(sequences, starts)):
        groups.setdefault(tuple(seq[: start - 1]), []).append(i)
    pieces = []
    for members in groups.values():
        members.sort(key=lambda i: len(sequences[i]) - starts[i])
        pieces += [members[lo: lo + batch_size] for lo in range(0, len(members), batch_size)]
    pieces.sort(key=lambda g: (-(starts[g[0]] - 1), -max(len(sequences[i]) - starts[i] for i in g)))
    batches: list[list[list[int]]] = []
    rows = context = cont = 0
    for group in pieces:
        g_context = starts[group[0]] - 1
        g_cont = max(len(sequences[i]) - starts[i] for i in group)
        new_rows = rows + len(group)
        cached, scored = _batch_tokens(new_rows, max(context, g_context), max(cont, g_cont))
        if batches and new_rows <= batch_size and cached <= max_cached_tokens and scored <= MAX_SCORED_TOKENS:
            batches[-1].append(group)
            rows, context, cont = new_rows, max(context, g_context), max(cont, g_cont)
        else:
            batches.append([group])
            rows, context, cont = len(group), g_context, g_cont
    return batches


def _batch_tokens(rows: int, context: int, cont: int) -> tuple[int, int]:
    """A batch's cached (row, token) slots and scored positions, padded as ``_run_batch`` pads them."""
    return bucket(rows, 4) * (bucket(context, 16) + bucket(cont, 4)), bucket(rows, 4) * bucket(cont, 4)


def score_sequences(decoder, sequences: Sequence[Sequence[int]], starts: Sequence[int], *,
                    batch_size: int = 32, kv_int8: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each token sequence, the log-probability of every token from index ``start`` on given the tokens
    before it, and whether it was the model's greedy choice: ``[(logprobs [n - start], is_greedy)]``.

    ``decoder``: a ``Decoder`` (its decode-layout parameters and compiled-function table are used).
    ``batch_size``: continuations per forward; ``kv_int8``: the contexts' keys and values held as int8,
    as an int8-KV deployment holds them.
    """
    sequences = [list(map(int, s)) for s in sequences]
    starts = [int(s) for s in starts]
    if len(sequences) != len(starts):
        raise ValueError(f"score: {len(sequences)} sequences but {len(starts)} starts")
    for n, (seq, start) in enumerate(zip(sequences, starts)):
        if not 1 <= start <= len(seq):
            raise ValueError(f"score: sequence {n}: start {start} must be in [1, {len(seq)}] "
                             "(at least one context token)")
    results: list = [None] * len(sequences)
    for batch in plan_batches(sequences, starts, max(1, int(batch_size))):
        _run_batch(decoder, sequences, starts, batch, results, kv_int8)
    return results


def _run_batch(decoder, sequences, starts, groups: list[list[int]], results: list, kv_int8: bool) -> None:
    rows = [i for g in groups for i in g]
    width = bucket(max(len(sequences[i]) - starts[i] for i in rows), 4)  # scored tokens per row
    n_rows = bucket(len(rows), 4)
    tokens = np.zeros((n_rows, width), np.int32)
    segments = np.zeros_like(tokens)
    targets = np.zeros_like(tokens)
    row_group = np.zeros(n_rows, np.int32)
    context_len = max(starts[g[0]] - 1 for g in groups)
    context = context_segments = None
    if context_len:
        context = np.zeros((bucket(len(groups), 1), bucket(context_len, 16)), np.int32)
        context_segments = np.zeros_like(context)
    r = 0
    for gi, group in enumerate(groups):
        p = starts[group[0]] - 1
        if context is not None:
            context[gi, :p] = sequences[group[0]][:p]
            context_segments[gi, :p] = 1
        for i in group:
            seq, n = sequences[i], len(sequences[i])
            tokens[r, : n - 1 - p] = seq[p: n - 1]
            segments[r, : n - 1 - p] = 1
            targets[r, : n - 1 - p] = seq[p + 1:]
            row_group[r] = gi
            r += 1
    args = [decoder.params, None if context is None else jnp.asarray(context),
            None if context is None else jnp.asarray(context_segments), jnp.asarray(row_group),
            jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(targets)]
    exe, _ = decoder.compiled(_score_rows, {"cfg": decoder._cfg, "int8": kv_int8}, (), *args)
    logprobs, greedy = (np.asarray(a) for a in exe(*args))
    r = 0
    for group in groups:
        for i in group:
            k = len(sequences[i]) - starts[i]  # row r's targets are seq[start:], its first k columns
            results[i] = (logprobs[r, :k], greedy[r, :k])
            r += 1
