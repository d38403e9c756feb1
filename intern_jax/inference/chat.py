"""Multi-turn chat over one KV cache: each turn prefills only the tokens the cache lacks.

``ChatSession.respond(ids)`` takes the whole conversation as token ids, keeps the longest
prefix already in the cache, prefills the rest and streams the continuation through the
same ``prefill`` / ``decode_step`` as ``generate``. ``send(text)`` wraps it with the chat
template and incremental detokenization. One conversation (batch 1) per session.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator, Sequence

import jax.numpy as jnp
import numpy as np

from intern_jax.inference import sampling as smp
from intern_jax.inference.sampling import NO_TOKEN, SamplingParams
from intern_jax.model import internlm2

# The module, not the package attribute of the same name (which is the function).
_gen = importlib.import_module("intern_jax.inference.generate")


class ChatSession:
    """A conversation whose KV cache persists across turns.

    ``params``/``cfg`` as for ``generate`` (``prepare_params`` output decodes faster);
    ``tokenizer`` is needed only for ``send``.
    """

    def __init__(self, params, cfg, tokenizer=None, sampling: SamplingParams | None = None,
                 system: str | None = None):
        self.params, self.cfg, self.tokenizer = params, cfg, tokenizer
        sampling = sampling or SamplingParams()
        if tokenizer is not None and not sampling.stop_ids:
            sampling = dataclasses.replace(sampling, stop_ids=_gen.default_stop_ids(tokenizer))
        self.sampling = sampling
        self.messages: list[dict] = [] if system is None else [{"role": "system", "content": system}]
        self.cache = internlm2.init_cache(cfg, 1, _gen.bucket(256))
        self.cached_ids: list[int] = []  # exactly the tokens whose keys/values are in the cache
        self.last_result: _gen.GenerationResult | None = None
        self.prefilled_tokens = 0  # tokens prefilled by the last turn (the reuse is the rest)

    def _truncate(self, keep: int) -> None:
        """Forget cached tokens from ``keep`` on (their slots become padding)."""
        slots = jnp.arange(self.cache["segment_ids"].shape[1])[None, :]
        self.cache = {
            **self.cache,
            "segment_ids": jnp.where(slots < keep, self.cache["segment_ids"], 0),
            "lengths": jnp.full_like(self.cache["lengths"], keep),
        }
        self.cached_ids = self.cached_ids[:keep]

    def respond(self, ids: Sequence[int], sampling: SamplingParams | None = None) -> Iterator[int]:
        """Stream the continuation of the conversation ``ids`` (all turns so far, as token ids).

        Yields token ids (a final stop token included); afterwards ``last_result`` holds the
        ``GenerationResult``. The cache then holds ``ids`` plus the reply (its last token is
        fed on the next turn).
        """
        ids = [int(t) for t in ids]
        sampling = sampling or self.sampling
        context = self.cfg.max_position_embeddings
        if len(ids) >= context:
            raise ValueError(
                f"the conversation has {len(ids)} tokens, but the model's context is {context} tokens; "
                "start a new session or drop earlier turns"
            )
        common = 0
        for a, b in zip(self.cached_ids, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # the last token is always fed: its logits pick the next
        if common < len(self.cached_ids):
            self._truncate(common)
        new = ids[common:]
        budget = min(sampling.max_new_tokens, context - len(ids))
        t = _gen.bucket(len(new))
        self.cache = _gen.grow_cache(self.cache, _gen.bucket(common + t + budget + 1))
        tokens = np.zeros((1, t), np.int32)
        tokens[0, : len(new)] = new
        segment_ids = (np.arange(t) < len(new)).astype(np.int32)[None, :]
        row = dataclasses.replace(sampling, max_new_tokens=budget)
        full = np.asarray([ids], np.int32)
        state = smp.init_state([row], self.cfg.vocab_size, full, None, [budget],
                               stop_width=_gen.bucket(len(row.stop_ids), 4))
        batch = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(segment_ids)}
        self.prefilled_tokens = len(new)

        start, compile_s = _gen._executable(_gen._start, {"cfg": self.cfg}, (2, 3), self.params, batch,
                                            self.cache, state)
        timer = _gen._Timer()
        with timer:
            token, self.cache, state = start(self.params, batch, self.cache, state)
            first = int(np.asarray(token)[0])
        prefill_s = timer.seconds
        self.cached_ids = list(ids)
        reply: list[int] = []
        step, compile_step = _gen._executable(_gen._decode_step, {"cfg": self.cfg}, (2, 3), self.params, token,
                                              self.cache, state)
        decode = _gen._Timer()
        current = first
        while current != NO_TOKEN:
            reply.append(current)
            yield current
            if bool(np.asarray(state["done"])[0]):
                break
            with decode:
                token, self.cache, state = step(self.params, token, self.cache, state)
                current = int(np.asarray(token)[0])
            self.cached_ids.append(reply[-1])
        reason = "stop" if bool(np.asarray(state["stopped"])[0]) else "length"
        self.last_result = _gen.GenerationResult(
            [reply], [reason], [len(ids)], prefill_s=prefill_s, decode_s=decode.seconds,
            compile_s=compile_s + compile_step,
        )

    def send(self, text: str, sampling: SamplingParams | None = None) -> Iterator[str]:
        """Add a user turn, stream the assistant's reply as text pieces, and record it."""
        from intern_jax.tokenizer import StreamDecoder

        if self.tokenizer is None:
            raise ValueError("ChatSession.send needs a tokenizer; use respond() with token ids instead")
        self.messages.append({"role": "user", "content": text})
        prompt = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt, add_bos=False)
        stops = set((sampling or self.sampling).stop_ids)
        decoder = StreamDecoder(self.tokenizer)
        pieces = []
        for token in self.respond(ids, sampling):
            if token in stops:
                continue
            piece = decoder.push(token)
            if piece:
                pieces.append(piece)
                yield piece
        tail = decoder.flush()
        if tail:
            pieces.append(tail)
            yield tail
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
