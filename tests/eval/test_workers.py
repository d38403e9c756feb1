"""--workers N: partitions of the items in parallel processes, merged, give exactly the outputs of one process
(a tiny random model with SmolLM2's tokenizer, saved as a Hugging Face checkpoint the workers load)."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from intern_jax.checkpoint import embedded_model_path, save_hf
    from intern_jax.testing import random_params, tiny_config
    from intern_jax.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(embedded_model_path())
    cfg = tiny_config(vocab_size=tok.vocab_size, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=32,
                      max_position_embeddings=256)
    path = tmp_path_factory.mktemp("tiny") / "tiny"
    save_hf(path, cfg, random_params(cfg, seed=3, scale=0.3), tok, layout="llama")
    return path


def outputs(directory: Path) -> dict:
    """Everything a run leaves that must not depend on how it was split (timings aside)."""
    summary = json.loads((directory / "summary.json").read_text())
    results = [{k: v for k, v in r.items() if k != "seconds"} for r in summary["results"]]
    predictions = {p.relative_to(directory).as_posix(): p.read_text()
                   for p in sorted((directory / "predictions").rglob("*.jsonl"))}
    return {"results": results, "predictions": predictions, "table": (directory / "summary.md").read_text()}


@pytest.mark.slow
def test_two_workers_give_the_outputs_of_one_process_and_their_answers_are_reused(evaluate_main, tiny_checkpoint,
                                                                                  tmp_path, capsys):
    argv = ["--model", str(tiny_checkpoint), "--datasets", "arith_mc,commonsense_mc_circular",
            "--limit", "5", "--batch-size", "4"]
    assert evaluate_main([*argv, "--output", str(tmp_path / "one")]) == 0
    assert evaluate_main([*argv, "--output", str(tmp_path / "two"), "--workers", "2"]) == 0
    capsys.readouterr()
    one, two = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert two == one
    assert len(two["predictions"]) == 2 and all(r["num_items"] == 5 for r in two["results"])
    assert sorted(p.name for p in (tmp_path / "two" / "partitions").iterdir()) == ["0-of-2", "1-of-2"]
    # one process over the partitions' caches recomputes nothing
    assert evaluate_main([*argv, "--output", str(tmp_path / "two"), "--reuse"]) == 0
    err = capsys.readouterr().err
    assert "reused 100 cached answers" in err, err  # arith_mc 5 x 4 options, circular 5 x 4 rotations x 4 options
    assert outputs(tmp_path / "two") == one


def test_partition_flags_are_checked(evaluate_main, tmp_path, capsys):
    base = ["--model", "x", "--datasets", "arith_mc", "--output", str(tmp_path)]
    for flags, message in [(["--partition", "2/2"], "need 0 <= W < N"), (["--partition", "two"], "give W/N"),
                           (["--merge", "2"], "partition 0 of 2 of x / arith_mc is missing")]:
        assert evaluate_main([*base, *flags]) == 2
        assert message in capsys.readouterr().err
