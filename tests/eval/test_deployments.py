"""scripts/evaluate.py --deployments: variants of one loaded model side by side, against independent routes.

The model is a tiny random one (2 layers, SmolLM2's tokenizer and vocabulary), so each variant's forward
compiles in a second; every route under test is the same for any model."""

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--datasets", "arith_mc", "--limit", "2", "--batch-size", "8"]
GROUP = 32


@pytest.fixture(scope="module")
def tiny_smol(smollm2):
    """A tiny random model that reads text with SmolLM2's tokenizer (a ``LoadedModel``, float32)."""
    from intern_jax import testing
    from intern_jax.checkpoint.loaded import LoadedModel

    cfg = testing.tiny_config(vocab_size=smollm2.config.vocab_size, max_position_embeddings=1024)
    return LoadedModel(cfg, testing.random_params(cfg, seed=3, scale=0.3, norm_scale=0.3), smollm2.tokenizer)


def loglikelihoods(out: Path, model: str) -> np.ndarray:
    rows = [json.loads(line) for line in (out / "predictions" / model / "arith_mc.jsonl").read_text().splitlines()]
    return np.array([r["loglikelihoods"] for r in rows])


def test_deployments_side_by_side_match_their_independent_routes(evaluate_main, tiny_smol, monkeypatch, tmp_path,
                                                                  capsys):
    import intern_jax.checkpoint
    from intern_jax.checkpoint.loaded import LoadedModel
    from intern_jax.eval import DecoderLM, find_datasets
    from intern_jax.eval.run import evaluate_dataset
    from intern_jax.model.quantized import quantize_params

    monkeypatch.setattr(intern_jax.checkpoint, "load_model", lambda path: tiny_smol)

    # the plain evaluation of the model as loaded
    assert evaluate_main(["--model", "smol.gguf", *ARGS, "--output", str(tmp_path / "plain")]) == 0
    capsys.readouterr()

    out = tmp_path / "deployed"
    assert evaluate_main(["--model", "smol.gguf", *ARGS, "--output", str(out), "--deployments", "fp,w8,kv8",
                 "--quant-group-size", str(GROUP), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["models"] == ["smol[fp]", "smol[w8]", "smol[kv8]"]
    assert sorted(r["model"] for r in printed["results"]) == sorted(printed["models"])
    header = (out / "summary.md").read_text().splitlines()[0]
    assert header == "| dataset | version | metric | mode | smol[fp] | smol[w8] | smol[kv8] |"

    fp, w8, kv8 = (loglikelihoods(out, f"smol_{v}") for v in ("fp", "w8", "kv8"))
    np.testing.assert_array_equal(fp, loglikelihoods(tmp_path / "plain", "smol"))

    # w8: the weights packed by quantize_params directly, evaluated plainly
    params, cfg = quantize_params(tiny_smol.params, tiny_smol.config, 8, GROUP)
    reference = DecoderLM(LoadedModel(cfg, params, tiny_smol.tokenizer), "ref", batch_size=8)
    _, predictions = evaluate_dataset(reference, find_datasets("arith_mc", ROOT / "configs" / "eval")[0], limit=2)
    np.testing.assert_allclose(w8, np.array([p["loglikelihoods"] for p in predictions]), rtol=1e-6, atol=1e-5)
    assert not np.array_equal(w8, fp)  # the weights really were quantized

    # kv8: the int8 cache changes every score a little (per-token absmax int8 keeps ~1% of each value)
    assert not np.array_equal(kv8, fp)
    np.testing.assert_allclose(kv8, fp, rtol=0.05, atol=0.5)


def test_unknown_deployment_names_the_known_ones(evaluate_main, capsys):
    assert evaluate_main(["--model", "smol.gguf", *ARGS, "--deployments", "fp,w3"]) == 2
    err = capsys.readouterr().err
    assert "unknown deployment 'w3'" in err and "fp, w8, w4, awq4, kv8" in err
    assert evaluate_main(["--model", "smol.gguf", *ARGS, "--deployments", "kv8,fp+kv8"]) == 2
    assert "'fp+kv8' repeats" in capsys.readouterr().err
    assert evaluate_main(["--model", "smol.gguf", *ARGS, "--deployments", "awq4", "--calib-samples", "0"]) == 2
    assert "--calib-samples must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's error: variants of in-process models only
        evaluate_main(["--url", "http://127.0.0.1:9/v1", *ARGS, "--deployments", "w8"])
    assert "give --model, not --url" in capsys.readouterr().err
