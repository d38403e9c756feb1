"""scripts/evaluate.py end to end on the embedded SmolLM2 and a shipped smoke set."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_evaluate_script_on_smollm2_writes_the_summary_and_reuses_its_answers(evaluate_main, smollm2_decoder,
                                                                              monkeypatch, tmp_path, capsys):
    import intern_jax.checkpoint

    monkeypatch.setattr(intern_jax.checkpoint, "load_model", lambda path: smollm2_decoder)
    argv = ["--model", "smollm2.gguf", "--datasets", "arith_mc,arith_qa", "--output", str(tmp_path),
            "--limit", "4", "--batch-size", "8"]
    assert evaluate_main(argv) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| dataset | version | metric | mode | smollm2 |"
    summary = json.loads((tmp_path / "summary.json").read_text())
    metrics = {(r["dataset"], m): v for r in summary["results"] for m, v in r["metrics"].items()}
    assert set(metrics) == {("arith_mc", "acc"), ("arith_mc", "acc_norm"), ("arith_qa", "numeric_match")}
    assert all(0 <= v <= 100 for v in metrics.values())
    predictions = (tmp_path / "predictions" / "smollm2" / "arith_mc.jsonl").read_text().splitlines()
    assert len(predictions) == 4
    assert (tmp_path / "results" / "smollm2" / "arith_qa.json").is_file()
    assert (tmp_path / "summary.md").read_text() == table and (tmp_path / "summary.csv").is_file()

    # --reuse: every answer comes from the cache; the decoder is never asked
    def refuse(*a, **k):
        raise AssertionError("recomputed a cached answer")

    monkeypatch.setattr(smollm2_decoder, "score", refuse)
    monkeypatch.setattr("intern_jax.eval.model.generate", refuse)
    assert evaluate_main([*argv, "--reuse"]) == 0
    captured = capsys.readouterr()
    assert captured.out == table and "reused" in captured.err
    assert evaluate_main([*argv, "--reuse", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    def without_time(results):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in results]

    assert without_time(printed["results"]) == without_time(summary["results"])
    assert [r["num_items"] for r in printed["results"]] == [4, 4]


def test_evaluate_script_bad_input_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--model", "x.gguf",
                          "--datasets", "no_such_set"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("evaluate.py: error: unknown dataset 'no_such_set'") and "arith_mc" in run.stderr
