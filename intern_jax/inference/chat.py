"""Multi-turn chat over one KV cache: each turn prefills only the tokens the cache lacks.

``ChatSession.respond(ids)`` takes the whole conversation as token ids, keeps the longest
prefix already in the cache, prefills the rest into its one-slot decode batch and streams
the continuation. ``send(text)`` wraps it with the chat template, incremental detokenization
and stop strings. One conversation per session; the serving engine keeps many.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence

from intern_jax.inference.decoder import Decoder
from intern_jax.inference.generate import GenerationResult, default_stop_ids, stream_text
from intern_jax.inference.sampling import NO_TOKEN, SamplingParams


class ChatSession:
    """A conversation whose KV cache persists across turns.

    ``model``: a ``Decoder`` or a loaded model (``params``, ``config``, ``tokenizer``); the
    tokenizer is needed only for ``send``.
    """

    def __init__(self, model, sampling: SamplingParams | None = None, system: str | None = None):
        self.decoder = Decoder.from_model(model)
        self.tokenizer = self.decoder.tokenizer
        sampling = sampling or SamplingParams()
        if self.tokenizer is not None and not sampling.stop_ids:
            sampling = dataclasses.replace(sampling, stop_ids=default_stop_ids(self.tokenizer))
        self.sampling = sampling
        self.messages: list[dict] = [] if system is None else [{"role": "system", "content": system}]
        self.batch = self.decoder.new_batch(1, 256)
        self.cached_ids: list[int] = []  # exactly the tokens whose keys/values are in the cache
        self.last_result: GenerationResult | None = None
        self.prefilled_tokens = 0  # tokens prefilled by the last turn (the reuse is the rest)

    def _start_turn(self, ids: Sequence[int], sampling: SamplingParams):
        """Prefill what the cache lacks of ``ids``; the first reply token's ``StepOutput`` and the budget."""
        ids = [int(t) for t in ids]
        context = self.decoder.config.max_position_embeddings
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
        budget = min(sampling.max_new_tokens, context - len(ids))
        row = dataclasses.replace(sampling, max_new_tokens=budget)
        self.prefilled_tokens = len(ids) - common
        first = self.batch.insert([0], [ids[common:]], [row], keep=[common], history=[ids])
        self.cached_ids = list(ids)
        return first, budget

    def respond(self, ids: Sequence[int], sampling: SamplingParams | None = None) -> Iterator[int]:
        """Stream the continuation of the conversation ``ids`` (all turns so far, as token ids).

        Yields token ids (a final stop token included); afterwards ``last_result`` holds the
        ``GenerationResult``. The cache then holds ``ids`` plus the reply (its last token is
        fed on the next turn).
        """
        sampling = sampling or self.sampling
        compiled_before = self.decoder.compile_seconds
        t0 = time.perf_counter()
        out, budget = self._start_turn(ids, sampling)
        prefill_s = time.perf_counter() - t0
        reply, logprobs, decode_s = [], [], 0.0
        while int(out.tokens[0]) != NO_TOKEN:
            reply.append(int(out.tokens[0]))
            logprobs.append(float(out.logprobs[0]))
            yield reply[-1]
            if self.batch.done()[0]:
                break
            self.cached_ids.append(reply[-1])  # fed by the next step
            t0 = time.perf_counter()
            out = self.batch.step()
            decode_s += time.perf_counter() - t0
        self._record(ids, reply, logprobs, prefill_s, decode_s, compiled_before,
                     "stop" if self.batch.stopped()[0] else "length")

    def _record(self, ids, reply, logprobs, prefill_s, decode_s, compiled_before, reason):
        compile_s = self.decoder.compile_seconds - compiled_before
        self.last_result = GenerationResult(
            [reply], [reason], [len(ids)], prefill_s=max(prefill_s - compile_s, 0.0), decode_s=decode_s,
            compile_s=compile_s, logprobs=[logprobs])

    def send(self, text: str, sampling: SamplingParams | None = None) -> Iterator[str]:
        """Add a user turn, stream the assistant's reply as text pieces, and record it.

        ``sampling.stop`` strings end the reply where they first appear."""
        if self.tokenizer is None:
            raise ValueError("ChatSession.send needs a tokenizer; use respond() with token ids instead")
        sampling = sampling or self.sampling
        self.messages.append({"role": "user", "content": text})
        prompt = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt, add_bos=False)
        compiled_before = self.decoder.compile_seconds
        t0 = time.perf_counter()
        first, budget = self._start_turn(ids, sampling)
        prefill_s = time.perf_counter() - t0
        reply_text, tokens, logprobs, by_string, decode_s = yield from stream_text(
            self.batch, 0, first, self.tokenizer, set(sampling.stop_ids), sampling.stop, budget - 1)
        self.cached_ids.extend(tokens[:-1])  # every reply token but the last was fed into the cache
        self.messages.append({"role": "assistant", "content": reply_text})
        self._record(ids, tokens, logprobs, prefill_s, decode_s, compiled_before,
                     "stop" if by_string or self.batch.stopped()[0] else "length")
