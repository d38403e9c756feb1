"""acc and acc_norm of a multiple-choice task on the embedded SmolLM2 equal lm-evaluation-harness' (its ``hf``
backend on our exported Llama checkpoint, same items and template), item by item."""

import json
import os

import numpy as np
import pytest

from intern_jax.eval import DecoderLM, tasks
from intern_jax.eval.config import data_file_config


@pytest.mark.slow
def test_acc_and_acc_norm_equal_lm_evals_hf_backend_item_by_item(smollm2, smollm2_decoder, tmp_path, rng):
    pytest.importorskip("torch")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from intern_jax.checkpoint import save_hf

    # 8 fresh arithmetic items in the --data layout, scored with lm-eval's common template by both sides; one
    # option repeats the answer five times (long, but cheap per character), so length normalisation matters
    rows = []
    for _ in range(8):
        a, b = (int(x) for x in rng.integers(2, 40, 2))
        right = str(a + b)
        options = [str(o) for o in rng.permutation([right, str(a + b + 1), ", ".join([right] * 5), str(a - b)])]
        rows.append({"question": f"What is {a} + {b}?", "choices": options, "answer": options.index(right)})
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = data_file_config(path)
    metrics, records = tasks.evaluate(DecoderLM(smollm2_decoder, "ours", batch_size=8), cfg,
                                      tasks.read_items(cfg.reader, True))

    save_hf(tmp_path / "hf", smollm2.config, smollm2.params, smollm2.tokenizer, layout="llama")
    hflm = HFLM(pretrained=str(tmp_path / "hf"), backend="causal", device="cpu", dtype="float32", batch_size=8)
    for row, record in zip(rows, records):
        context = f"Question: {row['question']}\nAnswer:"
        conts = [f" {c}" for c in row["choices"]]
        got = hflm.loglikelihood([Instance("loglikelihood", row, (context, c), i) for i, c in enumerate(conts)],
                                 disable_tqdm=True)
        ll = np.array([g[0] for g in got])
        assert np.allclose(record["loglikelihoods"], ll, rtol=1e-4, atol=1e-3), (record["loglikelihoods"], ll)
        assert record["prediction"] == int(np.argmax(ll))
        assert record["prediction_norm"] == int(np.argmax(ll / np.array([len(c) for c in conts])))
    assert any(r["prediction"] != r["prediction_norm"] for r in records)  # acc_norm is really tested
    acc = 100.0 * np.mean([r["prediction"] == row["answer"] for r, row in zip(records, rows)])
    assert metrics["acc"] == round(acc, 2)
