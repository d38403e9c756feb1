"""Token selection: sampling parameters, per-row sampling state and the sampling step.

Every knob is a per-row array inside ``SamplingState``, so one compiled function
serves greedy and sampled rows side by side (the serving engine mixes requests) and
a change of temperature never recompiles. Logit processing follows transformers'
order and semantics: repetition penalty (CTRL) -> temperature -> top-k -> top-p.
Each row owns its PRNG key, so a row's samples do not depend on its batch mates.
An optional per-row allowed-token bitmask (structured output: a grammar's next-token mask) is applied
to the raw logits before all of that; without one the sampling code is exactly the unmasked one.
This module does not run the model.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

NO_TOKEN = -1  # emitted for rows that have already finished
SEED_LIMIT = 1 << 32  # jax.random.key keeps 32 bits of a seed (without x64): larger ones would alias


class SamplingError(ValueError):
    """An invalid ``SamplingParams`` value; ``field`` names the setting (scripts turn it into their flag)."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field} {detail}")
        self.field, self.detail = field, detail


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one row picks its tokens.

    ``temperature`` 0 is greedy; ``top_k`` 0, ``top_p`` 1.0 and ``min_p`` 0 switch those filters off;
    ``repetition_penalty`` 1.0 is off (applied over prompt and generated tokens); ``presence_penalty``
    and ``frequency_penalty`` (OpenAI's, over generated tokens) 0 are off; ``min_new_tokens`` holds
    the stop ids back until that many tokens were generated.
    Generation of a row ends at a token in ``stop_ids``, after ``max_new_tokens``, or (text drivers)
    where one of the ``stop`` strings appears in the decoded text.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    max_new_tokens: int = 128
    stop_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()  # stop strings, matched on the decoded text (not part of it)
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_new_tokens: int = 0

    def __post_init__(self):
        object.__setattr__(self, "stop_ids", tuple(sorted(int(t) for t in self.stop_ids)))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)
        for name in ("temperature", "top_p", "repetition_penalty", "min_p", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise SamplingError(name, f"must be a finite number, got {value!r}")
        for name in ("top_k", "seed", "max_new_tokens", "min_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise SamplingError(name, f"must be an integer, got {value!r}")
        if self.temperature < 0:
            raise SamplingError("temperature", f"must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise SamplingError("top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError("top_p", f"must be in (0, 1] (1 = off), got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise SamplingError("repetition_penalty", f"must be > 0 (1 = off), got {self.repetition_penalty}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise SamplingError("seed", f"must be in [0, 2**32) (the PRNG key holds 32 bits), got {self.seed}")
        if self.max_new_tokens < 0:
            raise SamplingError("max_new_tokens", f"must be >= 0, got {self.max_new_tokens}")
        if not 0.0 <= self.min_p < 1.0:
            raise SamplingError("min_p", f"must be in [0, 1) (0 = off), got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise SamplingError(name, f"must be in [-2, 2] (0 = off), got {getattr(self, name)}")
        if self.min_new_tokens < 0:
            raise SamplingError("min_new_tokens", f"must be >= 0, got {self.min_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def per_row(sampling: SamplingParams | Sequence[SamplingParams], batch_size: int) -> list[SamplingParams]:
    """One ``SamplingParams`` per row. A single one is shared, with row ``b`` seeded ``seed + b``
    so that identical prompts in one batch draw different samples."""
    if isinstance(sampling, SamplingParams):
        return [dataclasses.replace(sampling, seed=(sampling.seed + b) % SEED_LIMIT) for b in range(batch_size)]
    rows = list(sampling)
    if len(rows) != batch_size:
        raise ValueError(f"got {len(rows)} SamplingParams for {batch_size} prompts; pass one or one per prompt")
    return rows


@jax.jit
def _advance_keys(keys, steps):
    """Each row's raw key data ``[B, 2]`` as it is after ``steps [B]`` sampled tokens (``sample`` keeps the
    first half of every split)."""

    def advance(key, n):
        split = lambda _, k: jax.random.key_data(jax.random.split(jax.random.wrap_key_data(k))[0])  # noqa: E731
        return jax.lax.fori_loop(0, n, split, key)

    return jax.vmap(advance)(keys, steps)


def init_state(rows: Sequence[SamplingParams], vocab_size: int, prompt_tokens=None, prompt_mask=None,
               max_new_tokens: Sequence[int] | None = None, stop_width: int | None = None,
               generated: Sequence[Sequence[int]] | None = None) -> dict:
    """Sampling state for a batch (host-side construction, arrays on device).

    ``prompt_tokens [B, T]`` with ``prompt_mask [B, T]`` seed the repetition-penalty presence
    mask. ``max_new_tokens`` overrides the per-row budgets (e.g. clamped to the context).
    ``stop_width`` pads the stop-id table to a fixed width so shapes stay stable.
    ``generated[b]``: tokens row ``b`` already generated (a sequence resumed after its cache was
    dropped): they count against its budget and ``min_new_tokens``, feed the presence/frequency
    penalties, and its random stream continues where it stopped, so the rest of its sample is the
    one it would have drawn uninterrupted. Rows whose budget is spent start done.
    """
    b = len(rows)
    budgets = np.array([r.max_new_tokens for r in rows] if max_new_tokens is None else max_new_tokens, np.int32)
    width = max([1, stop_width or 0] + [len(r.stop_ids) for r in rows])
    stops = np.full((b, width), NO_TOKEN, np.int32)
    for i, r in enumerate(rows):
        stops[i, : len(r.stop_ids)] = r.stop_ids
    presence = np.zeros((b, vocab_size), bool)
    if prompt_tokens is not None:
        toks = np.asarray(prompt_tokens)
        mask = np.ones(toks.shape, bool) if prompt_mask is None else np.asarray(prompt_mask, bool)
        r_idx, c_idx = np.nonzero(mask)
        presence[r_idx, toks[r_idx, c_idx]] = True
    keys = jnp.stack([jax.random.key_data(jax.random.key(r.seed)) for r in rows])
    done_already = np.zeros(b, np.int32)
    counts = np.zeros((b, vocab_size), np.int32)
    if generated is not None:
        for i, g in enumerate(generated):
            done_already[i] = len(g)
            np.add.at(counts[i], np.asarray(g, np.int64), 1)
        if done_already.any():
            keys = _advance_keys(keys, jnp.asarray(done_already))
    return {
        "key": keys,  # [B, 2] uint32 raw key data
        "temperature": jnp.asarray([r.temperature for r in rows], jnp.float32),
        "top_k": jnp.asarray([r.top_k for r in rows], jnp.int32),
        "top_p": jnp.asarray([r.top_p for r in rows], jnp.float32),
        "repetition_penalty": jnp.asarray([r.repetition_penalty for r in rows], jnp.float32),
        "min_p": jnp.asarray([r.min_p for r in rows], jnp.float32),
        "presence_penalty": jnp.asarray([r.presence_penalty for r in rows], jnp.float32),
        "frequency_penalty": jnp.asarray([r.frequency_penalty for r in rows], jnp.float32),
        "min_new_tokens": jnp.asarray([r.min_new_tokens for r in rows], jnp.int32),
        "counts": jnp.asarray(counts),  # generated tokens per id (presence/frequency)
        "stop_ids": jnp.asarray(stops),
        "max_new_tokens": jnp.asarray(budgets),
        "num_generated": jnp.asarray(done_already),
        "done": jnp.asarray(budgets <= done_already),
        "stopped": jnp.zeros((b,), bool),  # done because a stop token came (vs. the budget)
        "presence": jnp.asarray(presence),
    }


def apply_repetition_penalty(logits, presence, penalty):
    """CTRL penalty over tokens seen so far: positive logits divided, negative multiplied.

    logits ``[B, V]``, presence ``[B, V]`` bool, penalty ``[B]``."""
    p = penalty[:, None]
    penalized = jnp.where(logits > 0, logits / p, logits * p)
    return jnp.where(presence, penalized, logits)


def filter_top_k_top_p(logits, top_k, top_p):
    """Set logits outside each row's top-k, then outside its top-p nucleus, to -inf.

    logits ``[B, V]`` (already divided by the temperature), top_k ``[B]`` (0 = off),
    top_p ``[B]`` (1 = off). The nucleus is the smallest set of highest-probability
    tokens whose mass reaches ``top_p`` (at least one token is kept).
    """
    v = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)  # [B, V] descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)  # [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
    ordered = jnp.where(jnp.arange(v)[None, :] < k[:, None], ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = (mass_before < top_p[:, None]) | (jnp.arange(v)[None, :] == 0)
    smallest_kept = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < smallest_kept, -jnp.inf, logits)


def apply_presence_frequency(logits, counts, presence_penalty, frequency_penalty):
    """OpenAI's penalties over generated tokens: ``logit - frequency * count - presence * (count > 0)``."""
    return logits - frequency_penalty[:, None] * counts - presence_penalty[:, None] * (counts > 0)


def hold_stops(logits, stop_ids, hold):
    """Stop ids ``[B, W]`` (``NO_TOKEN`` padding) set to -inf in the rows where ``hold [B]`` (min_new_tokens)."""
    rows = jnp.arange(logits.shape[0])[:, None]
    is_stop = jnp.zeros(logits.shape, bool).at[rows, jnp.maximum(stop_ids, 0)].max(stop_ids >= 0)
    return jnp.where(is_stop & hold[:, None], -jnp.inf, logits)


def filter_min_p(logits, min_p):
    """Set to -inf every token whose probability is below ``min_p [B]`` times the row's largest (0 = off)."""
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.where(probs < min_p[:, None] * jnp.max(probs, axis=-1, keepdims=True), -jnp.inf, logits)


def bitmask_width(vocab_size: int) -> int:
    """32-bit words per row of an allowed-token bitmask over ``vocab_size`` tokens."""
    return -(-int(vocab_size) // 32)


def apply_token_bitmask(logits, bitmask):
    """Set to -inf every token a row's bitmask does not allow. ``bitmask [B, ceil(V / 32)]`` int32: token
    ``t`` is allowed when bit ``t % 32`` of word ``t // 32`` is set (llguidance's and xgrammar's layout;
    a row of all ones, i.e. -1, allows everything)."""
    b, v = logits.shape
    bits = jnp.right_shift(bitmask[:, :, None], jnp.arange(32, dtype=jnp.int32)) & 1  # [B, W, 32]
    allowed = bits.reshape(b, -1)[:, :v].astype(bool)
    return jnp.where(allowed, logits, -jnp.inf)


def _when(flags, fn, x):
    """``fn(x)`` in the rows where ``flags [B]``, skipped (``lax.cond``) when no row asks for it."""
    return jax.lax.cond(jnp.any(flags), lambda x: jnp.where(flags[:, None], fn(x), x), lambda x: x, x)


def process_logits(logits, state):
    """The logits each row samples from (``[B, V]`` float32), in transformers' order: repetition penalty,
    presence/frequency penalties, stop ids held back before ``min_new_tokens``, temperature, top-k,
    top-p, min-p. Greedy rows get the penalized logits unscaled (their argmax is the choice)."""
    logits = logits.astype(jnp.float32)
    logits = _when(state["repetition_penalty"] != 1.0,
                   lambda x: apply_repetition_penalty(x, state["presence"], state["repetition_penalty"]), logits)
    logits = _when((state["presence_penalty"] != 0.0) | (state["frequency_penalty"] != 0.0),
                   lambda x: apply_presence_frequency(x, state["counts"], state["presence_penalty"],
                                                      state["frequency_penalty"]), logits)
    logits = _when(state["num_generated"] < state["min_new_tokens"],
                   lambda x: hold_stops(x, state["stop_ids"], jnp.ones(x.shape[:1], bool)), logits)
    temperature = state["temperature"]
    greedy = temperature == 0.0
    scaled = logits / jnp.where(greedy, 1.0, temperature)[:, None]
    scaled = _when(~greedy & ((state["top_k"] > 0) | (state["top_p"] < 1.0)),
                   lambda x: filter_top_k_top_p(x, state["top_k"], state["top_p"]), scaled)
    return _when(~greedy & (state["min_p"] > 0.0), lambda x: filter_min_p(x, state["min_p"]), scaled)


def sample(logits, state, allowed=None):
    """Pick one token per row from ``logits [B, V]`` and advance the state.

    ``allowed``: an optional allowed-token bitmask ``[B, ceil(V / 32)]`` (see ``apply_token_bitmask``),
    applied before any other processing. Returns ``tokens [B]`` int32 (``NO_TOKEN`` for rows that were
    already done) and the new state. A row finishes when it emits a stop token or reaches its budget.
    """
    if allowed is not None:
        logits = apply_token_bitmask(logits.astype(jnp.float32), allowed)
    processed = process_logits(logits, state)
    keys = jax.vmap(lambda k: jax.random.split(jax.random.wrap_key_data(k)))(state["key"])  # [B, 2]
    greedy = state["temperature"] == 0.0
    best = jnp.argmax(processed, axis=-1).astype(jnp.int32)
    tokens = jax.lax.cond(
        jnp.all(greedy),
        lambda: best,
        lambda: jnp.where(
            greedy, best, jax.vmap(jax.random.categorical)(keys[:, 1], processed).astype(jnp.int32)
        ),
    )

    active = ~state["done"]
    tokens = jnp.where(active, tokens, NO_TOKEN)
    hit_stop = active & jnp.any(tokens[:, None] == state["stop_ids"], axis=-1)
    num_generated = state["num_generated"] + active.astype(jnp.int32)
    rows = jnp.arange(tokens.shape[0])
    presence = state["presence"].at[rows, jnp.maximum(tokens, 0)].max(active)
    counts = state["counts"].at[rows, jnp.maximum(tokens, 0)].add(active.astype(jnp.int32))
    new_state = {
        **state,
        "key": jax.vmap(jax.random.key_data)(keys[:, 0]),
        "num_generated": num_generated,
        "done": state["done"] | hit_stop | (num_generated >= state["max_new_tokens"]),
        "stopped": state["stopped"] | hit_stop,
        "presence": presence,
        "counts": counts,
    }
    return tokens, new_state
