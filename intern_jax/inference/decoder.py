"""The decoder: one object that owns decoding for a model, and the batches of sequences it decodes.

``Decoder(params, config)`` lays the parameters out for decoding once (layers unstacked so each
is read in place, a tied head given its own ``[E, V]`` copy; callers never see this) and holds
the compiled functions, one per shape bucket (rows, new tokens, cache capacity), in a
lock-guarded table of its own, so it may be shared between threads. It knows three things:

- ``DecodeBatch`` (``decoder.new_batch``): a fixed number of slots over one KV cache (dense, or
  paged with block tables set by the caller), with ``insert`` (prefill sequences into slots and
  sample their first tokens), ``step`` (one token for every live slot), ``run`` (up to N steps
  in one ``while_loop``) and ``release``. ``generate``, ``stream_generate``, ``ChatSession`` and
  the serving engine are drivers over it. A paged batch packs an insert's prompts into one stream
  (``kv_cache.PackedKV``: no padding to the longest prompt in the matmuls), steps only the slots
  that have a token to feed (gathered by index, padded to a power of two), and on CPU attends with
  the native paged kernel where ``kv_cache.native_attention_usable`` allows.
- per-token log-probabilities of each chosen token under the model's distribution (before any
  sampling filter), with the top-k alternatives when asked for;
- ``score``: the log-probability of each continuation token given its context, for evaluation
  and the corpus quality filter (``inference.scoring``: a context shared by several continuations
  is computed once).

It does not schedule requests (the engine does) nor turn tokens into text (``generate_text``
and ``ChatSession.send`` do, stop strings included).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import threading
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from intern_jax.config import Execution, ModelConfig
from intern_jax.inference import sampling as smp
from intern_jax.inference import scoring
from intern_jax.inference.sampling import NO_TOKEN, SamplingParams
from intern_jax.model import internlm2
from intern_jax.model.kv_cache import DenseKV, PackedKV, PagedKV, native_attention_usable
from intern_jax.model.layers import is_structured_weight
from intern_jax.sharding import make_mesh


def bucket(n: int, minimum: int = 16) -> int:
    """``n`` rounded up to a power of two, at least ``minimum``."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def decode_layout(params, cfg: ModelConfig):
    """``(params, cfg)`` laid out for decoding: same model, same outputs.

    Layers become a list of per-layer trees (the cached forward then reads each weight in place
    instead of copying its slice out of the stacked array every step), and a tied output head gets
    its own ``[E, V]`` copy (a plain matrix-vector product per token).
    """
    out = dict(params)
    if isinstance(params["layers"], dict):
        out["layers"] = [jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(cfg.num_layers)]
    if cfg.tie_word_embeddings:
        out["output"] = jnp.transpose(params["tok_embeddings"])
        cfg = dataclasses.replace(cfg, tie_word_embeddings=False)
    return out, cfg


# ---------------------------------------------------------------------------
# The compiled pieces (pure functions; the decoder compiles them per shape bucket)


def _last_logits(params, tokens, segment_ids, cache, cfg: ModelConfig, attention: str = "xla"):
    """Append ``tokens [B, T]`` (right padding: segment 0) to the cache; logits ``[B, V]`` at each row's last token.
    ``attention``: the cache's attention implementation (``Execution.attention_impl``)."""
    x, cache = internlm2.hidden_states(params, {"tokens": tokens, "segment_ids": segment_ids}, cfg, cache,
                                       execution=Execution(attention_impl=attention))
    last = jnp.maximum(jnp.sum(segment_ids != 0, axis=1) - 1, 0)
    x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]  # the head runs on one row per sequence
    return internlm2.head_logits(params, x, cfg), cache


def _pick(logits, state, num_top: int, allowed=None):
    """Sample one token per row (among the ``allowed`` bitmask's tokens, when given); its log-probability
    under the model (unmasked) and the top ``num_top`` alternatives."""
    tokens, state = smp.sample(logits, state, allowed)
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    info = {"logprob": jnp.take_along_axis(logprobs, jnp.maximum(tokens, 0)[:, None], axis=1)[:, 0]}
    if num_top:
        info["top_logprobs"], info["top_ids"] = jax.lax.top_k(logprobs, num_top)
    return tokens, info, state


def _insert(params, cache, state, rows, tokens, segment_ids, keep, row_state, allowed, cfg: ModelConfig,
            num_top: int, attention: str = "xla"):
    """Prefill ``tokens [n, T]`` into slots ``rows [n]`` after their first ``keep [n]`` cached tokens;
    ``allowed``: None, or the first tokens' allowed-token bitmasks ``[n, W]``."""
    part = cache.rows(rows).with_lengths(keep)
    logits, part = _last_logits(params, tokens, segment_ids, part, cfg, attention)
    first, info, row_state = _pick(logits, row_state, num_top, allowed)
    cache = cache.set_rows(rows, part)
    state = jax.tree.map(lambda a, r: a.at[rows].set(r, mode="drop"), state, row_state)
    return first, info, cache, state


def _insert_packed(params, cache, state, rows, tokens, token_row, token_slot, first, count, keep, row_state, allowed,
                   cfg: ModelConfig, num_top: int, width: int, attention: str = "xla"):
    """``_insert`` for a paged cache with the prompts packed into one stream ``tokens [N]`` (see
    ``kv_cache.PackedKV``; ``width``: its XLA attention's regrouping): the model's matmuls run on the
    real tokens, not on ``[n, T]`` padding."""
    part = PackedKV(cache.rows(rows).with_lengths(keep), token_row, token_slot, first, count, width)
    segments = (token_row < rows.shape[0]).astype(jnp.int32)[None]
    x, part = internlm2.hidden_states(params, {"tokens": tokens[None], "segment_ids": segments}, cfg, part,
                                      execution=Execution(attention_impl=attention))
    logits = internlm2.head_logits(params, jnp.take(x[0], part.last(), axis=0, mode="clip"), cfg)
    first_tokens, info, row_state = _pick(logits, row_state, num_top, allowed)
    cache = cache.set_rows(rows, part.cache)
    state = jax.tree.map(lambda a, r: a.at[rows].set(r, mode="drop"), state, row_state)
    return first_tokens, info, cache, state


def _step(params, cache, state, tokens, cfg: ModelConfig, num_top: int, allowed=None, attention: str = "xla"):
    """Feed each live slot its last token ``[B]`` and pick the next (among ``allowed [B, W]``'s tokens
    when given); done slots emit ``NO_TOKEN``."""
    done = state["done"] | (cache.lengths >= cache.capacity)
    state = {**state, "done": done}
    segment_ids = (~done).astype(jnp.int32)[:, None]
    logits, cache = _last_logits(params, jnp.maximum(tokens, 0)[:, None], segment_ids, cache, cfg, attention)
    tokens, info, state = _pick(logits, state, num_top, allowed)
    return tokens, info, cache, state


def _live_step(params, cache, state, tokens, rows, allowed, cfg: ModelConfig, num_top: int, attention: str = "xla"):
    """``_step`` over the slots ``rows [W]`` only (every live slot is among them; entries equal to the slot
    count are padding), or over every slot when ``rows`` is None: the model runs on ``W`` rows instead of
    all of them. The other slots keep their state and emit ``NO_TOKEN``. ``allowed``: None, or an
    allowed-token bitmask ``[B, W]`` per slot."""
    if rows is None:
        return _step(params, cache, state, tokens, cfg, num_top, allowed, attention)
    b = tokens.shape[0]

    def take(a):
        return jnp.take(a, rows, axis=0, mode="clip")

    part, sub = cache.rows(rows), jax.tree.map(take, state)
    sub = {**sub, "done": sub["done"] | (rows >= b)}  # padding entries decode nothing
    picked, info, part, sub = _step(params, part, sub, take(tokens), cfg, num_top,
                                    None if allowed is None else take(allowed), attention)
    cache = cache.set_rows(rows, part)
    state = jax.tree.map(lambda a, r: a.at[rows].set(r, mode="drop"), state, sub)

    def spread(x, fill):
        return jnp.full((b, *x.shape[1:]), fill, x.dtype).at[rows].set(x, mode="drop")

    return spread(picked, NO_TOKEN), {k: spread(v, 0) for k, v in info.items()}, cache, state


def _run(params, cache, state, tokens, cfg: ModelConfig, num_top: int, num_steps: int, attention: str = "xla"):
    """Up to ``num_steps`` steps in one ``while_loop``, ending early once every slot is done.

    Returns ``tokens [B, num_steps]`` (``NO_TOKEN`` where nothing was emitted), their infos
    ``[B, num_steps, ...]``, the cache and the state.
    """
    b = tokens.shape[0]
    out = jnp.full((b, num_steps), NO_TOKEN, jnp.int32)
    infos = {"logprob": jnp.zeros((b, num_steps), jnp.float32)}
    if num_top:
        infos["top_logprobs"] = jnp.zeros((b, num_steps, num_top), jnp.float32)
        infos["top_ids"] = jnp.zeros((b, num_steps, num_top), jnp.int32)

    def cond(carry):
        i, _, _, state, _, _ = carry
        return (i < num_steps) & ~jnp.all(state["done"])

    def body(carry):
        i, tokens, cache, state, out, infos = carry
        tokens, info, cache, state = _step(params, cache, state, tokens, cfg, num_top, attention=attention)
        out = out.at[:, i].set(tokens)
        infos = {k: infos[k].at[:, i].set(v) for k, v in info.items()}
        return i + 1, tokens, cache, state, out, infos

    _, _, cache, state, out, infos = jax.lax.while_loop(
        cond, body, (jnp.int32(0), tokens, cache, state, out, infos))
    return out, infos, cache, state


# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PagedLayout:
    """A paged cache: ``num_pages`` pages of ``page_size`` tokens; each slot addresses up to
    ``pages_per_slot`` of them through its block table."""

    num_pages: int
    page_size: int = 64
    pages_per_slot: int = 0  # 0: enough for the model's context


class Decoder:
    """Decoding for one model: prepared parameters and the compiled functions, shared by its batches.

    ``Decoder(params, config, tokenizer=None)``, or ``Decoder.from_model(load_model(path))``.
    ``config`` stays the model's own; the decode layout is private. ``execution`` (``config.Execution``)
    gives the compute dtype (default: the params') and the attention implementation of the cached forward
    (``attention_impl``: xla, pallas, or auto, the Pallas kernels where the backend has them); remat and
    ``attention_chunk`` (training memory settings) do not apply. ``tp=N`` shards the weights over
    the first N devices with the logical-axis rules training uses (heads, kv heads, MLP and vocabulary
    split over ``tensor``); the cache and every activation follow by sharding propagation.

    Compiled functions are kept per argument shape, at most ``max_executables`` of them (least recently
    used dropped first, counted in ``evicted_executables``): each XLA:CPU executable of a full model holds
    several hundred memory mappings of its own while it lives, and a process that keeps compiling new
    shapes would otherwise run into the kernel's per-process limit (``vm.max_map_count``), where the next
    compile crashes. ``compiler_options``: XLA options for every compile (e.g.
    ``{"xla_backend_optimization_level": 0}``: faster compiles of slower code).
    """

    DEFAULT_MAX_EXECUTABLES = 48

    def __init__(self, params, config: ModelConfig, tokenizer=None, *, tp: int = 1,
                 execution: Execution | None = None, max_executables: int = DEFAULT_MAX_EXECUTABLES,
                 compiler_options: dict | None = None):
        if max_executables < 1:
            raise ValueError(f"max_executables must be >= 1, got {max_executables}")
        self.config = config
        self.tokenizer = tokenizer
        self.execution = execution or Execution()
        self.mesh = None
        if tp > 1:
            if tp > len(jax.devices()):
                raise ValueError(f"tp={tp} needs {tp} devices; {len(jax.devices())} are visible")
            self.mesh = make_mesh({"tensor": tp}, jax.devices()[:tp])
        self.params, self._cfg = self._decode_params(params)
        # what every compiled decode function is specialised on: the decode layout's config and the attention
        # implementation ("auto": the Pallas paged kernel on GPU, the XLA gather elsewhere)
        self._static = {"cfg": self._cfg, "attention": self.execution.attention_impl}
        self._executables: collections.OrderedDict = collections.OrderedDict()
        self.max_executables = max_executables
        self.compiler_options = dict(compiler_options or {})
        self.evicted_executables = 0
        self._lock = threading.Lock()
        self.compile_seconds = 0.0

    def _decode_params(self, params) -> tuple:
        """``params`` as the compiled functions take them: sharded over the tensor mesh, in the decode layout,
        in the compute dtype (applied once: weights held in it compute exactly as weights cast per layer)."""
        config = self.config
        if self.mesh is not None:
            if any(is_structured_weight(w) for w in jax.tree.leaves(params, is_leaf=is_structured_weight)):
                raise ValueError(f"tp={self.mesh.size} with packed (quantized) weights: tensor parallelism shards "
                                 "float weights only; serve this checkpoint with tp=1, or its float original with tp")
            params = jax.device_put(params, internlm2.param_shardings(config, self.mesh))
        params, cfg = decode_layout(params, config)
        compute = self.execution.compute_dtype(config)
        if compute != config.param_dtype:
            params = jax.tree.map(lambda w: w.astype(compute), params, is_leaf=is_structured_weight)
            cfg = dataclasses.replace(cfg, param_dtype=compute)
        return params, cfg

    def with_params(self, params) -> Decoder:
        """A decoder over other weights for the same model (a fine-tune of it, say: same config, same shapes
        and dtypes) that shares this one's compiled functions, so nothing is compiled again for it. Both
        then count and evict compiled functions together."""
        new_params, _ = self._decode_params(params)
        mine, tree = jax.tree_util.tree_flatten_with_path(self.params)
        theirs, other = jax.tree_util.tree_flatten_with_path(new_params)
        if tree != other:
            raise ValueError("with_params: the weights are not this model's (their tree differs)")
        for (path, a), (_, b) in zip(mine, theirs):
            if (a.shape, a.dtype) != (b.shape, b.dtype):
                raise ValueError(f"with_params: weight {jax.tree_util.keystr(path)} is {b.dtype}{list(b.shape)}, "
                                 f"this model's is {a.dtype}{list(a.shape)}")
        twin = copy.copy(self)  # the executables, their lock and the settings are shared
        twin.params = new_params
        return twin

    @classmethod
    def from_model(cls, model, *, tp: int = 1, execution: Execution | None = None, **options) -> Decoder:
        """A decoder for a loaded model (anything with ``params``, ``config`` and ``tokenizer``), run with
        ``execution`` or, by default, the compute dtype the model carries (``LoadedModel.execution``);
        ``options``: the other keywords of ``Decoder`` (``max_executables``, ``compiler_options``)."""
        if isinstance(model, Decoder):
            return model
        if execution is None and getattr(model, "execution", None) is not None:
            execution = Execution(dtype=model.execution.dtype)
        return cls(model.params, model.config, getattr(model, "tokenizer", None), tp=tp, execution=execution,
                   **options)

    @property
    def num_executables(self) -> int:
        return len(self._executables)

    def compiled(self, fn, static: dict, donate: tuple[int, ...], *args):
        """``fn`` compiled for these argument shapes (once per shape), and the seconds spent compiling now."""
        leaves, treedef = jax.tree.flatten(args)
        key = (fn, tuple(sorted(static.items())), treedef,
               tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in leaves))
        with self._lock:
            exe = self._executables.get(key)
            if exe is not None:
                self._executables.move_to_end(key)
                return exe, 0.0
            t0 = time.perf_counter()
            lowered = jax.jit(lambda *a: fn(*a, **static), donate_argnums=donate).lower(*args)
            exe = lowered.compile(self.compiler_options) if self.compiler_options else lowered.compile()
            seconds = time.perf_counter() - t0
            self._executables[key] = exe
            while len(self._executables) > self.max_executables:
                self._executables.popitem(last=False)
                self.evicted_executables += 1
            self.compile_seconds += seconds
            return exe, seconds

    def forget_compiled(self) -> int:
        """Drop every compiled function (each is compiled again when next needed); how many were held."""
        with self._lock:
            n = len(self._executables)
            self._executables.clear()
            return n

    def new_batch(self, slots: int, capacity: int | None = None, *, paged: PagedLayout | None = None,
                  kv_int8: bool = False, num_top_logprobs: int = 0, stop_width: int = 4) -> DecodeBatch:
        """An empty batch of ``slots`` sequences.

        Dense: each slot holds ``capacity`` tokens (default: the model's context; the batch grows
        it when an insert needs more). Paged: ``paged`` sizes the page pool; slot ``i`` is given
        pages ``i * pages_per_slot ...`` until the caller sets its own block tables.
        """
        cfg = self.config
        context = cfg.max_position_embeddings
        dtype = self.execution.compute_dtype(cfg)
        if paged is None:
            cache = DenseKV.init(cfg, slots, bucket(capacity or context), dtype=dtype, int8=kv_int8)
        else:
            per_slot = paged.pages_per_slot or -(-context // paged.page_size)
            native = native_attention_usable(dtype, int8=kv_int8, devices=1 if self.mesh is None else self.mesh.size)
            cache = PagedKV.init(cfg, paged.num_pages, paged.page_size, slots, per_slot, dtype=dtype, int8=kv_int8,
                                 native=native)
            tables = np.arange(slots * per_slot, dtype=np.int32).reshape(slots, per_slot) % paged.num_pages
            cache = cache.with_block_tables(tables)
        return DecodeBatch(self, cache, num_top_logprobs, stop_width)

    def score(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *,
              batch_size: int = 32, kv_int8: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each token sequence, the log-probability of every token from index ``start`` on given
        the tokens before it, and whether it was the model's greedy choice: ``[(logprobs, is_greedy)]``.

        Sequences that share a context have it computed once, and the output head runs only where a
        token is scored (``inference.scoring``); ``batch_size`` continuations run per forward;
        ``kv_int8``: the contexts' keys and values are held as int8."""
        return scoring.score_sequences(self, sequences, starts, batch_size=batch_size, kv_int8=kv_int8)


@dataclasses.dataclass
class StepOutput:
    """One token per slot (``NO_TOKEN`` where none), its log-probability, and top alternatives if asked for."""

    tokens: np.ndarray  # [B] int
    logprobs: np.ndarray  # [B] float
    top_ids: np.ndarray | None = None  # [B, k]
    top_logprobs: np.ndarray | None = None  # [B, k]


class DecodeBatch:
    """Slots over one KV cache, decoded together: ``insert``, ``step`` / ``run``, ``release``.

    Not thread-safe: one driver owns a batch. Slot ``i``'s state: its cache row (or block table),
    its sampling state, its last token (fed at the next step), and whether it is done.
    """

    def __init__(self, decoder: Decoder, cache, num_top: int, stop_width: int):
        self.decoder = decoder
        self.cache = cache
        self.num_top = num_top
        slots = cache.batch_size
        idle = [SamplingParams(max_new_tokens=0)] * slots
        self.state = smp.init_state(idle, decoder.config.vocab_size, stop_width=bucket(stop_width, 4))
        self.last = np.full(slots, NO_TOKEN, np.int32)
        # paged: every slot's whole block table, kept here; each call sees only as many pages per slot
        # (a power of two) as its longest sequence needs, so attention gathers no unused pages
        self.tables = np.asarray(cache.block_tables).copy() if isinstance(cache, PagedKV) else None

    @property
    def slots(self) -> int:
        return self.cache.batch_size

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray(self.cache.lengths)

    def done(self) -> np.ndarray:
        return np.asarray(self.state["done"])

    def stopped(self) -> np.ndarray:
        """Per slot: finished on a stop token (rather than its budget or the cache's end)."""
        return np.asarray(self.state["stopped"])

    def set_block_tables(self, slots: Sequence[int], tables) -> None:
        """Paged caches: the pages each of ``slots`` addresses, ``[len(slots), pages_per_slot]``."""
        if not isinstance(self.cache, PagedKV):
            raise TypeError("set_block_tables needs a paged batch (new_batch(..., paged=PagedLayout(...)))")
        tables = np.asarray(tables, np.int32)
        self.tables[np.asarray(slots), : tables.shape[1]] = tables

    def _fit_tables(self, tokens: int) -> None:
        """Paged: hand the cache block tables wide enough for ``tokens`` tokens per slot. XLA attention
        gathers every page a table holds, so it gets the power of two of pages the longest sequence needs;
        the native kernel reads only the pages a sequence fills, so it always gets whole tables (one
        compiled program for every length)."""
        if self.tables is None:
            return
        page = self.cache.page_size
        width = min(self.tables.shape[1], bucket(-(-int(tokens) // page), 1))  # a full slot ends ("length")
        if self.cache._native(self.decoder._static["attention"]):
            width = self.tables.shape[1]
        self.cache = self.cache.with_block_tables(self.tables[:, :width])

    def _widen_stops(self, width: int) -> None:
        have = self.state["stop_ids"].shape[1]
        if width > have:
            pad = bucket(width, 4) - have
            self.state = {**self.state, "stop_ids": jnp.pad(self.state["stop_ids"], [(0, 0), (0, pad)],
                                                           constant_values=NO_TOKEN)}

    def insert(self, slots: Sequence[int], prompts: Sequence[Sequence[int]],
               sampling: Sequence[SamplingParams], *, keep: Sequence[int] | None = None,
               history: Sequence[Sequence[int]] | None = None, allowed: np.ndarray | None = None,
               generated: Sequence[Sequence[int]] | None = None) -> StepOutput:
        """Prefill ``prompts`` into ``slots`` after their first ``keep`` cached tokens (default 0: a new
        sequence) and pick each one's first token, which is returned and fed at the next step.

        ``sampling[i].max_new_tokens`` is the slot's budget (the caller clamps it to the context);
        ``history[i]`` (default: the prompt) seeds the repetition penalty: pass the whole sequence
        when ``keep`` > 0. ``allowed``: None, or an allowed-token bitmask per prompt ``[n, ceil(V / 32)]``
        int32 for its first token (see ``sampling.apply_token_bitmask``; -1 rows allow everything).
        ``generated[i]``: the tokens the sequence had already generated before it was dropped and is
        now prefilled again (see ``sampling.init_state``); ``max_new_tokens`` then still counts them.
        Returns a ``StepOutput`` over the inserted slots, in order.
        """
        n = len(slots)
        if not (n == len(prompts) == len(sampling)):
            raise ValueError(f"insert: {n} slots, {len(prompts)} prompts and {len(sampling)} sampling params")
        keep = [0] * n if keep is None else [int(k) for k in keep]
        history = prompts if history is None else history
        need = max(k + len(p) + s.max_new_tokens for k, p, s in zip(keep, prompts, sampling))
        if isinstance(self.cache, DenseKV) and need > self.cache.capacity:
            self.cache = self.cache.grown(bucket(need))
        self._fit_tables(max(k + len(p) for k, p in zip(keep, prompts)))
        rows = self.insert_rows(n)
        t = bucket(max(len(p) for p in prompts))
        tokens = np.zeros((rows, t), np.int32)
        segments = np.zeros((rows, t), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = p
            segments[i, : len(p)] = 1
        index = np.full(rows, self.slots, np.int32)  # padding rows: out of range, never written back
        index[:n] = slots
        keep_rows = np.zeros(rows, np.int32)
        keep_rows[:n] = keep
        padded = list(sampling) + [SamplingParams(max_new_tokens=0)] * (rows - n)
        self._widen_stops(max(len(s.stop_ids) for s in padded))
        width = self.state["stop_ids"].shape[1]
        hist = np.zeros((rows, bucket(max(len(h) for h in history))), np.int32)
        hist_mask = np.zeros(hist.shape, bool)
        for i, h in enumerate(history):
            hist[i, : len(h)] = h
            hist_mask[i, : len(h)] = True
        generated = None if generated is None else list(generated) + [[]] * (rows - n)
        row_state = smp.init_state(padded, self.decoder.config.vocab_size, hist, hist_mask, stop_width=width,
                                   generated=generated)
        d = self.decoder
        masks = None
        if allowed is not None:
            masks = np.full((rows, smp.bitmask_width(d.config.vocab_size)), -1, np.int32)
            masks[:n] = allowed
            masks = jnp.asarray(masks)
        static = {**d._static, "num_top": self.num_top}
        if self._packs():
            # the native kernel attends over the stream as it is; the XLA path regroups it by sequence
            fn, args = _insert_packed, (d.params, self.cache, self.state, jnp.asarray(index),
                                        *_pack(prompts, keep, rows), jnp.asarray(keep_rows), row_state, masks)
            static["width"] = 0 if self.cache._native(d._static["attention"]) else t
        else:
            fn, args = _insert, (d.params, self.cache, self.state, jnp.asarray(index), jnp.asarray(tokens),
                                 jnp.asarray(segments), jnp.asarray(keep_rows), row_state, masks)
        exe, _ = d.compiled(fn, static, (1, 2), *args)
        first, info, self.cache, self.state = exe(*args)
        out = _to_host(first, info)
        self.last[np.asarray(slots)] = out.tokens[:n]
        return _rows(out, slice(0, n))

    def step(self, allowed: np.ndarray | None = None) -> StepOutput:
        """One token for every live slot (``NO_TOKEN`` for done or empty ones). ``allowed``: None, or an
        allowed-token bitmask per slot ``[slots, ceil(V / 32)]`` int32 (-1 rows: unconstrained); without
        one the step runs the unmasked program."""
        d = self.decoder
        self._fit_tables(self._longest_live() + 1)
        masks = None if allowed is None else jnp.asarray(allowed, jnp.int32)
        args = (d.params, self.cache, self.state, jnp.asarray(self.last), self._live_rows(), masks)
        exe, _ = d.compiled(_live_step, {**d._static, "num_top": self.num_top}, (1, 2), *args)
        tokens, info, self.cache, self.state = exe(*args)
        out = _to_host(tokens, info)
        self.last = out.tokens.copy()
        return out

    def run(self, num_steps: int) -> StepOutput:
        """Up to ``num_steps`` steps on the device in one loop; arrays gain a step axis ``[B, num_steps]``."""
        d = self.decoder
        self._fit_tables(self._longest_live() + num_steps)
        args = (d.params, self.cache, self.state, jnp.asarray(self.last))
        static = {**d._static, "num_top": self.num_top, "num_steps": int(num_steps)}
        exe, _ = d.compiled(_run, static, (1, 2), *args)
        tokens, infos, self.cache, self.state = exe(*args)
        out = _to_host(tokens, infos)
        emitted = out.tokens != NO_TOKEN
        has = emitted.any(axis=1)
        last_index = np.where(has, emitted.shape[1] - 1 - np.argmax(emitted[:, ::-1], axis=1), 0)
        self.last = np.where(has, out.tokens[np.arange(self.slots), last_index], self.last).astype(np.int32)
        return out

    def insert_rows(self, n: int) -> int:
        """The rows an insert of ``n`` prompts is compiled for. Packed inserts: 1, else a power of four
        (at most the slot count's power of two): their matmuls run on the token stream, a row costs only
        its logits and state, so coarse buckets keep the programs few (one per stream length and bucket).
        Unpacked inserts pad every row to the longest prompt: a power of two."""
        if not self._packs() or n <= 1:
            return bucket(n, 1)
        rows = 4
        while rows < n:
            rows *= 4
        return min(rows, bucket(self.slots, 1))

    def _packs(self) -> bool:
        """Whether inserts pack their prompts into one stream: paged caches, unless the model's RoPE scales
        with each sequence's length (dynamic NTK), which a shared stream cannot carry per token."""
        return self.tables is not None and self.decoder.config.rope_scaling.type != "dynamic"

    def _live_rows(self):
        """Paged batches: the slots with a token to feed, padded with out-of-range entries to a power of
        two (so a lightly loaded batch, or one with finished slots between live ones, steps only its live
        rows). Dense batches: None, every slot steps (gathering rows of a dense cache would copy them)."""
        if self.tables is None:
            return None
        fed = np.flatnonzero(self.last != NO_TOKEN).astype(np.int32)
        rows = np.full(bucket(max(fed.size, 1), 1), self.slots, np.int32)
        rows[: fed.size] = fed
        return jnp.asarray(rows)

    def _longest_live(self) -> int:
        if self.tables is None:
            return 0
        live = ~self.done()
        return int(self.lengths[live].max()) if live.any() else 0

    def release(self, slots: Sequence[int]) -> None:
        """Free ``slots``: they stop decoding and their cached tokens are forgotten."""
        index = jnp.asarray(np.asarray(slots, np.int32))
        self.state = {**self.state, "done": self.state["done"].at[index].set(True)}
        self.cache = self.cache.with_lengths(self.cache.lengths.at[index].set(0))
        self.last[np.asarray(slots)] = NO_TOKEN

    def truncate(self, slot: int, keep: int) -> None:
        """Forget slot ``slot``'s cached tokens from ``keep`` on."""
        self.cache = self.cache.with_lengths(self.cache.lengths.at[slot].set(keep))


def _pack(prompts, keep, rows: int):
    """``prompts`` packed into one stream for ``_insert_packed``: ``(tokens [N], token_row [N], token_slot [N],
    first [rows], count [rows])`` with ``N`` the token count rounded up to a power of two (at least 16);
    stream padding has row ``rows``, padding rows count 0 tokens."""
    total = sum(len(p) for p in prompts)
    n = bucket(total)
    tokens = np.zeros(n, np.int32)
    token_row = np.full(n, rows, np.int32)
    token_slot = np.zeros(n, np.int32)
    first = np.zeros(rows, np.int32)
    count = np.zeros(rows, np.int32)
    at = 0
    for i, (p, k) in enumerate(zip(prompts, keep)):
        span = slice(at, at + len(p))
        tokens[span], token_row[span] = p, i
        token_slot[span] = np.arange(k, k + len(p))
        first[i], count[i] = at, len(p)
        at += len(p)
    return tuple(jnp.asarray(a) for a in (tokens, token_row, token_slot, first, count))


def _to_host(tokens, info) -> StepOutput:
    return StepOutput(np.asarray(tokens), np.asarray(info["logprob"]),
                      np.asarray(info["top_ids"]) if "top_ids" in info else None,
                      np.asarray(info["top_logprobs"]) if "top_logprobs" in info else None)


def _rows(out: StepOutput, rows) -> StepOutput:
    return StepOutput(out.tokens[rows], out.logprobs[rows],
                      None if out.top_ids is None else out.top_ids[rows],
                      None if out.top_logprobs is None else out.top_logprobs[rows])
