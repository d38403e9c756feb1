"""DecoderLM: lm-eval's requests over the decoder, checked against an independent float64 reference."""

import numpy as np
import pytest

from intern_jax.eval import DecoderLM, RequestCache
from intern_jax.model import internlm2


def reference_logprobs(params, cfg, ids):
    """log p(ids[t] | ids[:t]) for t >= 1 and whether each was the argmax: float64 numpy log-softmax of
    the model's full-sequence logits (no cache, no decode layout)."""
    tokens = np.zeros((1, cfg.max_position_embeddings), np.int32)  # one padded shape: one compile
    tokens[0, : len(ids)] = ids
    segments = (np.arange(tokens.shape[1]) < len(ids)).astype(np.int32)[None]
    logits, _ = internlm2.forward_jit(params, {"tokens": tokens, "segment_ids": segments}, cfg)
    logits = np.asarray(logits, np.float64)[0, : len(ids) - 1]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    target = np.asarray(ids[1:])
    return logp[np.arange(len(target)), target], logits.argmax(-1) == target


def greedy_next(params, cfg, ids):
    tokens = np.zeros((1, cfg.max_position_embeddings), np.int32)
    tokens[0, : len(ids)] = ids
    segments = (np.arange(tokens.shape[1]) < len(ids)).astype(np.int32)[None]
    logits, _ = internlm2.forward_jit(params, {"tokens": tokens, "segment_ids": segments}, cfg)
    return np.asarray(logits)[0, len(ids) - 1].argmax()


def test_loglikelihood_matches_float64_log_softmax_of_the_full_forward(tiny_eval, rng):
    cfg, params, decoder = tiny_eval
    lm = DecoderLM(decoder, "tiny", batch_size=4)
    requests = []
    for _ in range(7):
        context = rng.integers(0, cfg.vocab_size, rng.integers(1, 20)).tolist()
        cont = rng.integers(0, cfg.vocab_size, rng.integers(1, 8)).tolist()
        requests.append((context, cont))
    # one continuation that is the model's own greedy choice, so is_greedy is seen True as well
    context = requests[0][0]
    requests.append((context, [int(greedy_next(params, cfg, context))]))
    got = lm.loglikelihood(requests)
    for (context, cont), (total, greedy) in zip(requests, got):
        logp, is_max = reference_logprobs(params, cfg, context + cont)
        want = logp[len(context) - 1:]
        assert abs(total - want.sum()) <= 1e-4 * max(1.0, abs(want.sum())), (total, want.sum())
        assert greedy == bool(is_max[len(context) - 1:].all())
    assert got[-1][1] is True


def test_a_context_longer_than_the_window_keeps_its_last_tokens(tiny_eval, rng):
    cfg, params, decoder = tiny_eval
    lm = DecoderLM(decoder, "tiny", max_length=16)
    context, cont = rng.integers(0, cfg.vocab_size, 30).tolist(), rng.integers(0, cfg.vocab_size, 4).tolist()
    (total, _), = lm.loglikelihood([(context, cont)])
    kept = (context + cont)[-16:]
    logp, _ = reference_logprobs(params, cfg, kept)
    assert abs(total - logp[-4:].sum()) <= 1e-4 * max(1.0, abs(logp[-4:].sum()))


def test_rolling_loglikelihood_of_token_ids_sums_every_token_after_the_first(tiny_eval, rng):
    cfg, params, decoder = tiny_eval
    ids = rng.integers(0, cfg.vocab_size, 25).tolist()
    (total,) = DecoderLM(decoder, "tiny").loglikelihood_rolling([ids])
    logp, _ = reference_logprobs(params, cfg, ids)
    assert abs(total - logp.sum()) <= 1e-4 * max(1.0, abs(logp.sum()))
    # in windows of 8: each window is scored given the tokens before it in that window, every token once
    windowed = DecoderLM(decoder, "tiny", max_length=8).loglikelihood_rolling([ids])[0]
    expected, done = 0.0, 1
    while done < len(ids):
        end = min(len(ids), done + 7)
        begin = max(0, end - 8)
        expected += reference_logprobs(params, cfg, ids[begin:end])[0][done - begin - 1:].sum()
        done = end
    assert abs(windowed - expected) <= 1e-4 * max(1.0, abs(expected))


def test_reuse_reads_every_answer_back_without_recomputing(tiny_eval, tmp_path, rng):
    cfg, _, decoder = tiny_eval
    requests = [(rng.integers(0, cfg.vocab_size, 6).tolist(), rng.integers(0, cfg.vocab_size, 3).tolist())
                for _ in range(4)]
    path = tmp_path / "cache.jsonl"
    first = DecoderLM(decoder, "tiny", cache=RequestCache(path)).loglikelihood(requests)
    rolling = DecoderLM(decoder, "tiny", cache=RequestCache(path)).loglikelihood_rolling([requests[0][0]])

    class Refuses:
        config, tokenizer = decoder.config, None

        def score(self, *a, **k):
            raise AssertionError("recomputed a cached answer")

    again = DecoderLM(decoder, "tiny", cache=RequestCache(path, reuse=True))
    again.decoder = Refuses()
    assert again.loglikelihood(requests) == first
    assert again.loglikelihood_rolling([requests[0][0]]) == rolling
    assert again.cache.hits == 5
    # without reuse, the file is not read
    assert RequestCache(path).entries == {}
    # another model's name is another key: nothing is shared
    other = DecoderLM(decoder, "other", cache=RequestCache(path, reuse=True))
    other.decoder = Refuses()
    with pytest.raises(AssertionError, match="recomputed"):
        other.loglikelihood(requests[:1])


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from intern_jax.checkpoint import embedded_model_path
    from intern_jax.tokenizer import Tokenizer

    return Tokenizer.from_gguf(embedded_model_path())


def test_text_requests_split_at_the_boundary_the_way_lm_eval_does(smollm2_tokenizer):
    """Continuation tokens are the whole encoding's tail after the context's token count; a context's
    trailing space moves to the continuation."""
    from intern_jax.inference import Decoder
    from intern_jax.testing import random_params, tiny_config

    tok = smollm2_tokenizer
    cfg = tiny_config(vocab_size=tok.vocab_size, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=32)
    lm = DecoderLM(Decoder(random_params(cfg), cfg, tok), "tiny")
    context, cont = lm.encode_pair("Question: What is 2 + 2?\nAnswer:", " 4")
    whole = tok.encode("Question: What is 2 + 2?\nAnswer: 4")
    assert context + cont == whole and cont == whole[len(tok.encode("Question: What is 2 + 2?\nAnswer:")):]
    assert lm.encode_pair("Answer: ", "4") == lm.encode_pair("Answer:", " 4")
    # a merge across the boundary: the context keeps its own encoding, the continuation is the whole's tail
    merged = tok.encode("The cats sleep")
    assert lm.encode_pair("The cat", "s sleep") == (tok.encode("The cat"), merged[len(tok.encode("The cat")):])
    assert lm.encode_pair("", "hello")[0] == [tok.bos_id]
