"""Token masks for structured output: the bitmask the sampler applies (against llguidance's own numpy
reference), the decoder's masked insert / step on a tiny random model (against the model's full forward),
the engine's plumbing of a per-request grammar, and llguidance grammars walked at random through their
masks: every path they allow parses and validates."""

import json

import jax
import jsonschema
import numpy as np
import pytest
from llguidance.numpy import apply_token_bitmask_inplace

from intern_jax.inference import Decoder, SamplingParams
from intern_jax.inference.sampling import apply_token_bitmask, bitmask_width
from intern_jax.inference.tool_calls import HermesProtocol
from intern_jax.model import internlm2
from intern_jax.serve import Engine, EngineConfig

V = 97  # the tiny model's vocabulary (tests/serve/conftest.py)


def _pack(allowed: np.ndarray) -> np.ndarray:
    """Boolean ``[B, V]`` -> llguidance's bitmask ``[B, ceil(V / 32)]`` int32 (bit t % 32 of word t // 32)."""
    b, v = allowed.shape
    words = np.zeros((b, bitmask_width(v)), np.uint32)
    for r, t in zip(*np.nonzero(allowed)):
        words[r, t // 32] |= np.uint32(1) << np.uint32(t % 32)
    return words.view(np.int32)


def _subsets(rng, rows: int, size: int) -> np.ndarray:
    allowed = np.zeros((rows, V), bool)
    for r in range(rows):
        allowed[r, rng.choice(V, size, replace=False)] = True
    return allowed


@pytest.fixture(scope="module")
def dec(tiny):
    cfg, params = tiny
    return Decoder(params, cfg)


def test_token_bitmask_equals_llguidance_reference(rng):
    logits = rng.normal(size=(4, V)).astype(np.float32)
    allowed = rng.random((4, V)) < 0.3
    allowed[3] = True  # an all-ones row leaves the logits as they are
    mask = _pack(allowed)
    mask[3] = -1
    want = logits.copy()
    apply_token_bitmask_inplace(want, mask)
    got = np.asarray(apply_token_bitmask(logits, mask))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[3], logits[3])


def test_masked_insert_and_step_pick_the_best_allowed_token(dec, tiny, rng):
    cfg, params = tiny
    prompts = [rng.integers(1, V, n).tolist() for n in (5, 11, 8)]
    masks = []
    for _ in range(2):  # the first token's masks, then the second's; the third row is unconstrained
        mask = _pack(_subsets(rng, 3, 4))
        mask[2] = -1
        masks.append(mask)
    batch = dec.new_batch(3, 64)
    first = batch.insert([0, 1, 2], prompts, [SamplingParams(max_new_tokens=4)] * 3, allowed=masks[0]).tokens
    second = batch.step(masks[1]).tokens

    # the reference: the model's full forward over prompt + first token, argmax over the allowed set
    # (segments from the lengths, not from ``tokens > 0``: token 0 is a token the model may pick)
    tokens = np.zeros((3, 12), np.int32)
    segments = np.zeros((3, 12), np.int32)
    for r, p in enumerate(prompts):
        tokens[r, : len(p) + 1] = p + [int(first[r])]
        segments[r, : len(p) + 1] = 1
    logits = np.asarray(jax.jit(lambda t, s: internlm2.forward(params, {"tokens": t, "segment_ids": s}, cfg)[0])(
        tokens, segments), np.float32)
    for r, p in enumerate(prompts):
        for i, got in enumerate((first[r], second[r])):
            allowed = np.asarray(apply_token_bitmask(logits[r, len(p) - 1 + i][None], masks[i][r][None]))[0]
            assert got == int(np.argmax(allowed)), f"row {r}, token {i}"


def test_sampled_tokens_stay_inside_the_mask(dec, rng, seed):
    rows = 3  # the shapes of the test above: its compiled programs serve
    prompts = [rng.integers(1, V, 6).tolist() for _ in range(rows)]
    sampling = [SamplingParams(temperature=1.5, seed=(seed + i) % 2**31, max_new_tokens=8) for i in range(rows)]
    batch = dec.new_batch(rows, 64)
    for step in range(4):
        allowed = _subsets(rng, rows, 3)
        if step == 0:
            tokens = batch.insert(list(range(rows)), prompts, sampling, allowed=_pack(allowed)).tokens
        else:
            tokens = batch.step(_pack(allowed)).tokens
        assert all(allowed[r, t] for r, t in enumerate(tokens)), step


class ForcedTokens:
    """A grammar that allows exactly ``tokens``, in order (the ``structured.Constraint`` interface)."""

    def __init__(self, tokens):
        self.tokens, self.i = list(tokens), 0

    def fill(self, row):
        row[:] = 0
        row[:] = _pack(np.eye(V, dtype=bool)[[self.tokens[self.i]]])[0]

    def accept(self, token):
        ok = token == self.tokens[self.i]
        self.i += ok
        return ok

    @property
    def finished(self):
        return self.i == len(self.tokens)

    error = "not the forced token"


def test_engine_follows_a_request_grammar_beside_a_free_request(dec, rng):
    engine = Engine(dec, EngineConfig(max_batch_size=2, max_num_tokens=16, block_size=16))
    prompts = [rng.integers(1, V, n).tolist() for n in (7, 5)]
    free = engine.generate(prompts[:1], SamplingParams(max_new_tokens=6))[0].token_ids
    forced = rng.integers(1, V, 4).tolist()
    rids = [engine.add_request(prompts[0], SamplingParams(max_new_tokens=6)),
            engine.add_request(prompts[1], SamplingParams(max_new_tokens=12), constraint=ForcedTokens(forced))]
    tokens, reasons = {rid: [] for rid in rids}, {}
    while len(reasons) < len(rids):
        for inc in engine.step():
            tokens[inc.request_id] += inc.token_ids
            if inc.finished:
                reasons[inc.request_id] = inc.finish_reason
    assert tokens[rids[1]] == forced and reasons[rids[1]] == "stop"  # it ends when its grammar completes
    assert tokens[rids[0]] == free  # the masked steps leave the free request's tokens as they were
    assert engine.pool.num_free == engine.pool.num_blocks


# -- real grammars over SmolLM2's vocabulary, walked at random -----------------------------------------

SCHEMA = {"type": "object", "properties": {
    "unit": {"enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 14},
    "city": {"type": "string", "maxLength": 6},
    "alerts": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}},
    "required": ["unit", "days", "city", "alerts", "tags"], "additionalProperties": False}


@pytest.fixture(scope="module")
def grammars():
    from intern_jax.checkpoint import embedded_model_path
    from intern_jax.serve.structured import Grammars
    from intern_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(embedded_model_path())
    return Grammars(tokenizer, tokenizer.vocab_size)


def _random_walk(grammars, grammar, rng, limit=400) -> str:
    constraint = grammars.constraint(grammar)
    row = np.zeros(grammars.width, np.int32)
    tokens = []
    while not constraint.finished and len(tokens) < limit:
        constraint.fill(row)
        bits = np.unpackbits(row.view(np.uint8), bitorder="little")[: grammars.vocab_size].astype(bool)
        choices = np.nonzero(bits)[0]
        choices = [t for t in choices if t not in grammars.stop_ids] or choices
        token = int(rng.choice(choices))
        if token in grammars.stop_ids:
            break
        assert constraint.accept(token), constraint.error
        tokens.append(token)
    assert len(tokens) < limit, "the walk did not end"
    return grammars.tokenizer.decode(tokens)


@pytest.mark.slow
def test_every_path_through_a_schema_mask_validates(grammars, rng):
    grammar = grammars.json_schema(SCHEMA)
    for _ in range(3):
        jsonschema.validate(json.loads(_random_walk(grammars, grammar, rng)), SCHEMA)


@pytest.mark.slow
def test_every_path_through_a_tool_call_mask_is_a_valid_hermes_call(grammars, rng):
    tools = [{"type": "function", "function": {"name": "forecast", "parameters": SCHEMA}},
             {"type": "function", "function": {"name": "ping", "parameters": {
                 "type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                 "required": ["n"], "additionalProperties": False}}}]
    grammar = grammars.tool_calls(tools, "hermes", parallel=False)
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for _ in range(3):
        text = _random_walk(grammars, grammar, rng)
        parsed = HermesProtocol().parse(text, list(by_name))
        assert parsed.error is None and len(parsed.calls) == 1, text
        jsonschema.validate(parsed.calls[0].arguments, by_name[parsed.calls[0].name])


def test_bad_schema_is_a_value_error_naming_the_field(grammars):
    with pytest.raises(ValueError, match="response_format.json_schema.schema"):
        grammars.json_schema({"type": "object", "properties": {"x": {"type": "no-such-type"}}})
    with pytest.raises(ValueError, match="response_format.json_schema.schema"):
        grammars.json_schema(["not", "a", "schema"])


# -- InternLM2's format, on a small InternLM2-style SentencePiece vocabulary trained here --------------


@pytest.fixture(scope="module")
def internlm2_tokenizer(tmp_path_factory):
    import random

    from intern_jax.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("spm")
    words = "the weather city paris time zone name get call tool value celsius sunny rain".split()
    rng = random.Random(0)
    lines = (" ".join(rng.choice(words) for _ in range(12)) + ' {"a": 1, "b": [2, 3]}' for _ in range(2000))
    (root / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    return train_sentencepiece([root / "corpus.txt"], root / "tok", vocab_size=300)


FORECAST = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                             "parameters": {"type": "object", "properties": {
                                                 "unit": {"enum": ["celsius", "fahrenheit"]},
                                                 "days": {"type": "integer", "minimum": 1, "maximum": 9}},
                                                 "required": ["unit", "days"], "additionalProperties": False}}}


def test_every_path_through_an_internlm2_call_mask_is_a_valid_plugin_call(internlm2_tokenizer, rng):
    from intern_jax.inference.tool_calls import InternLM2Protocol
    from intern_jax.serve.structured import Grammars

    grammars = Grammars(internlm2_tokenizer, internlm2_tokenizer.vocab_size)
    grammar = grammars.tool_calls([FORECAST], "internlm2")
    for _ in range(3):
        text = _random_walk(grammars, grammar, rng)
        assert text.startswith("<|action_start|><|plugin|>\n") and text.endswith("<|action_end|>")
        parsed = InternLM2Protocol().parse(text, ["get_weather"])
        assert parsed.error is None and [c.name for c in parsed.calls] == ["get_weather"]
        jsonschema.validate(parsed.calls[0].arguments, FORECAST["function"]["parameters"])


def test_internlm2_conversation_with_a_tool_result_renders_in_its_format(internlm2_tokenizer):
    from intern_jax.serve import tools

    protocol = tools.tool_protocol("auto", internlm2_tokenizer.chat_template)  # no template: InternLM2's
    assert protocol.name == "internlm2"
    messages = tools.render_messages([
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"unit": "celsius", "days": 2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "22 C"}], [FORECAST], protocol)
    text = internlm2_tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    # InternLM2's chat format (its chat_format.md), written out by hand
    plugins = json.dumps([FORECAST["function"]], ensure_ascii=False, indent=2)
    assert text == ("<s><|im_start|>system\nYou are a weather bot.<|im_end|>\n"
                    f"<|im_start|>system name=<|plugin|>\n{plugins}<|im_end|>\n"
                    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
                    '<|im_start|>assistant\n<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": '
                    '{"unit": "celsius", "days": 2}}<|action_end|>\n<|im_end|>\n'
                    "<|im_start|>environment name=<|plugin|>\n22 C<|im_end|>\n<|im_start|>assistant\n")


# -- a streamed reply split into content and tool calls ----------------------------------------------


def test_tool_call_stream_holds_back_only_a_possible_call_start():
    from intern_jax.inference.tool_calls import HermesProtocol
    from intern_jax.serve.tools import ToolCallStream

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"unit": "celsius", "days": 2}}\n</tool_call>'
    reply = "Let me check. " + call
    for cut in range(1, len(reply)):  # every split of the reply into two streamed pieces
        stream = ToolCallStream(HermesProtocol(), ["get_weather"])
        first, deltas = stream.push(reply[:cut])
        assert "Let me check. ".startswith(first), cut  # no piece of the call is ever sent as content
        held = reply[len(first): cut]  # only what may start a call (or is one) is held back
        assert held == "" or "<tool_call>".startswith(held) or held.startswith("<tool_call>"), cut
        second, more = stream.push(reply[cut:])
        rest, last = stream.finish()
        assert (first + second, rest, len(stream.calls)) == ("Let me check. ", "", 1), cut
        arguments = "".join(d["function"]["arguments"] for d in deltas + more + last)
        assert json.loads(arguments) == {"unit": "celsius", "days": 2}
    # text that only looks like the start of a call is sent at the end, whole
    stream = ToolCallStream(HermesProtocol(), ["get_weather"])
    sent = stream.push("a < b and <tool")[0] + stream.push("box> is not a call")[0]
    rest, deltas = stream.finish()
    assert sent + rest == "a < b and <toolbox> is not a call" and deltas == [] and stream.calls == []
