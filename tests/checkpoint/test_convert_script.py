"""scripts/convert.py: a thin command line over convert_checkpoint."""

import runpy
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from intern_jax.checkpoint import convert_checkpoint, load_model, save_hf

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "convert.py"


@pytest.fixture(scope="module")
def convert_main():
    return runpy.run_path(str(SCRIPT))["main"]


def test_help_lists_targets_and_dtypes():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("--input", "--output", "native", "internlm2", "llama", "bfloat16"):
        assert word in out


def test_convert_hf_llama_to_native_in_bfloat16(convert_main, tiny, make_params, tmp_path, capsys):
    cfg = tiny(attention_bias=True)
    params = make_params(cfg)
    save_hf(tmp_path / "src", cfg, params, layout="llama")
    rc = convert_main(
        [
            "--input",
            str(tmp_path / "src"),
            "--output",
            str(tmp_path / "dst"),
            "--to",
            "native",
            "--dtype",
            "bfloat16",
            "--quiet",
        ]
    )
    assert rc == 0 and "wrote native" in capsys.readouterr().out
    loaded = load_model(tmp_path / "dst")
    assert loaded.config.param_dtype == "bfloat16"
    for x, y in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params), strict=True):
        assert (x == y.astype("bfloat16")).all()


def test_convert_reports_missing_input_and_non_empty_output(convert_main, tiny, make_params, tmp_path, capsys):
    rc = convert_main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--to", "llama"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    cfg = tiny()
    save_hf(tmp_path / "src", cfg, make_params(cfg), layout="internlm2")
    rc = convert_main(["--input", str(tmp_path / "src"), "--output", str(tmp_path / "full"), "--to", "llama"])
    assert rc == 2 and "not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_unknown_target_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match="native, internlm2, llama"):
        convert_checkpoint(tmp_path, tmp_path / "o", to="gguf")


def test_script_targets_are_the_library_targets():
    from intern_jax.checkpoint import CONVERT_TARGETS

    assert list(runpy.run_path(str(SCRIPT))["TARGETS"]) == list(CONVERT_TARGETS)
