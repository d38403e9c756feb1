"""Structured output: grammars that a request's tokens must follow, enforced while decoding by a token mask.

``Grammars(tokenizer, vocab_size)`` compiles a JSON schema (``response_format`` ``json_schema``), any JSON
object (``json_object``) or a forced tool call in the model's own format (``tool_choice="required"`` or a
named function: Hermes' ``<tool_call>...</tool_call>`` or InternLM2's ``<|action_start|><|plugin|>...``)
into a ``Constraint``: a host-side matcher that fills the sequence's allowed-token bitmask before each
token and advances with each accepted one. The engine applies the bitmask to the logits before sampling
(``sampling.apply_token_bitmask``), so the text parses (and validates against the schema) whatever the
model, unless ``max_tokens`` cuts it short.

The grammar library is llguidance: it installs from PyPI as one self-contained wheel with no
dependencies (xgrammar requires torch, transformers and triton at run time, which a JAX server should
not carry), reads a Hugging Face ``tokenizers`` vocabulary directly, has no per-schema precompilation
step, fills a 49k-token mask in about a tenth of a millisecond on this loaded CPU
(``scripts/bench/structured.py``, docs/benchmarks.md), and its Lark grammars embed JSON schemas
(``%json``) and special tokens (``<|plugin|>``), which the tool-call formats need. JSON is compact
(``", "`` and ``": "`` separators, no free whitespace) so that a small model cannot wander off in
whitespace. This module does not decode and does not schedule.
"""

from __future__ import annotations

import json
import threading

import llguidance
import llguidance.numpy as llnp
import numpy as np

from intern_jax.inference.sampling import bitmask_width

# compact JSON, as json.dumps writes it: no whitespace between tokens for a small model to loop on
JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


class Constraint:
    """One sequence's grammar state: ``fill(row)`` writes the allowed-token bitmask of its next token,
    ``accept(token)`` advances it (False when the grammar refuses the token), ``finished`` once the
    grammar is complete and allows nothing more but the end of the sequence."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher

    def fill(self, row: np.ndarray) -> None:
        """Write the bitmask into ``row`` (``[ceil(V / 32)]`` int32, C-contiguous)."""
        llnp.fill_next_token_bitmask(self.matcher, row[None] if row.ndim == 1 else row, 0)

    def accept(self, token: int) -> bool:
        return bool(self.matcher.consume_token(int(token)))

    @property
    def finished(self) -> bool:
        return bool(self.matcher.is_stopped())

    @property
    def error(self) -> str:
        return self.matcher.get_error()


class Grammars:
    """Grammar compilation for one tokenizer (its llguidance vocabulary is built once, on first use)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids=()):
        self.tokenizer, self.vocab_size = tokenizer, int(vocab_size)
        self.stop_ids = sorted(int(t) for t in (stop_ids or getattr(tokenizer, "stop_ids", ()) or ()))
        self.width = bitmask_width(vocab_size)
        self._ll: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll is None:
                self._ll = llguidance.LLTokenizer(self.tokenizer.to_hf().to_str(), n_vocab=self.vocab_size,
                                                  eos_token=self.stop_ids or None)
            return self._ll

    # -- grammars (llguidance's serialized form); each raises ValueError naming ``field`` ------------

    def json_schema(self, schema, field: str = "response_format.json_schema.schema") -> str:
        if not isinstance(schema, dict):
            raise ValueError(f"{field}: a JSON schema is a JSON object, got {type(schema).__name__}")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except ValueError as e:
            raise ValueError(f"{field}: {e}") from None
        return self._checked(grammar, field)

    def json_object(self, field: str = "response_format") -> str:
        return self.json_schema({"type": "object"}, field)

    def tool_calls(self, tools: list[dict], protocol: str, parallel: bool = True, field: str = "tools") -> str:
        """One or more calls (one when not ``parallel``) of ``tools`` (OpenAI function tools), each
        ``{"name": <a tool's name>, "arguments" | "parameters": <that tool's parameters schema>}``,
        in the ``protocol``'s own format (``hermes`` or ``internlm2``)."""
        args_key = "parameters" if protocol == "internlm2" else "arguments"
        variants = []
        for tool in tools:
            fn = tool["function"]
            params = fn.get("parameters") or {"type": "object"}
            variants.append({"type": "object", "properties": {"name": {"const": fn["name"]}, args_key: params},
                             "required": ["name", args_key], "additionalProperties": False})
        body = json.dumps({"anyOf": variants, "x-guidance": JSON_OPTIONS}, ensure_ascii=False)
        if protocol == "internlm2":  # InternLM2 makes one call per turn
            lark = f"start: <|action_start|> <|plugin|> \"\\n\" body <|action_end|>\nbody: %json {body}\n"
        elif protocol == "hermes":
            more = ' ("\\n" call)*' if parallel else ""
            lark = f'start: call{more}\ncall: "<tool_call>\\n" body "\\n</tool_call>"\nbody: %json {body}\n'
        else:
            raise ValueError(f"tool calls in the {protocol!r} format cannot be enforced; use hermes or internlm2")
        return self._checked(llguidance.LLMatcher.grammar_from_lark(lark), field)

    def _checked(self, grammar: str, field: str) -> str:
        error = llguidance.LLMatcher.validate_grammar(grammar, self.ll_tokenizer)
        if error and not error.startswith("WARNING"):
            raise ValueError(f"{field}: cannot be enforced while decoding: {error}")
        return grammar

    def constraint(self, grammar: str) -> Constraint:
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"the grammar does not compile: {matcher.get_error()}")
        return Constraint(matcher)
