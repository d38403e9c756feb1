"""The device suite (scripts/bench/device_suite.py) runs end to end, with only the GPU image's packages.

The GPU figures come from one command run on a borrowed machine whose image has jax, numpy, optax,
torch, transformers and a few more, but not grain, array-record, gguf and the other data-processing
packages. These tests run ``--smoke`` (every part, tiny shapes, Pallas in interpret mode) in a
subprocess where every installed package that image lacks is hidden, so the suite cannot rot between
GPU runs; and they check the failure paths (a part that raises or runs out of time is recorded,
counted in the exit code, and the suite goes on).
"""

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "scripts/bench/device_suite.py"
PARTS = ("calibration", "flash", "paged", "qmatmul", "qlora", "decode", "train")

# Absent on the GPU machine's image, named in the suite's brief.
ABSENT = ("grain", "array_record", "tensorflow_datasets", "gguf", "datasketch", "trafilatura", "apache_beam")
# Import names of what the GPU machine's image holds (its package list, /work/.library/device/KINDS.md).
GPU_IMAGE = {
    "absl", "accelerate", "aiofiles", "aiohttp", "anyio", "attr", "attrs", "certifi", "charset_normalizer", "chex",
    "click", "cloudpickle", "contourpy", "cupy", "cycler", "dateutil", "einops", "equinox", "etils", "filelock",
    "flatbuffers", "flax", "fontTools", "fsspec", "functorch", "google", "grpc", "h11", "h5py", "hf_xet", "httpcore",
    "httpx", "huggingface_hub", "humanize", "hypothesis", "idna", "iniconfig", "jax", "jax_plugins", "jaxlib",
    "jaxtyping", "jinja2", "kiwisolver", "llvmlite", "lxml", "markdown_it", "markupsafe", "matplotlib", "mdurl",
    "ml_dtypes", "mpmath", "msgpack", "networkx", "numba", "numpy", "onnxruntime", "opt_einsum", "optax", "orbax",
    "packaging", "pandas", "peft", "PIL", "pip", "pkg_resources", "pluggy", "prometheus_client", "psutil", "pyarrow",
    "pygments", "pyparsing", "pytest", "regex", "requests", "rich", "safetensors", "scipy", "sentencepiece",
    "setuptools", "shellingham", "simplejson", "six", "sklearn", "sortedcontainers", "sympy", "tabulate",
    "tensorboard", "tensorstore", "tokenizers", "toolz", "torch", "tqdm", "transformers", "treescope", "triton",
    "typing_extensions", "urllib3", "wrapt", "xxhash", "yaml", "zipp",
}
PROJECT = {"intern_jax", "kernels", "scripts", "configs", "tests"}

SITECUSTOMIZE = f'''
import pkgutil
import sys

ABSENT = {sorted(ABSENT)!r}
ALLOWED = {sorted(GPU_IMAGE | PROJECT)!r}

# None in sys.modules is how Python spells "not installed": importing raises ModuleNotFoundError and
# importlib.util.find_spec answers None, as for a package the GPU machine's image lacks.
for name in {{m.name for m in pkgutil.iter_modules()}} | set(ABSENT):
    if name in ABSENT or not (name in ALLOWED or name in sys.stdlib_module_names or name.startswith("_")):
        sys.modules.setdefault(name, None)
'''


def run_suite(tmp_path, *args, env=None, timeout=600):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp_path / "out"
    environ = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu", **(env or {})}
    environ.pop("XLA_FLAGS", None)  # one device, as on the GPU machine (conftest asks for 8 fake ones)
    proc = subprocess.run([sys.executable, str(SUITE), "--out", str(out), *args], capture_output=True, text=True,
                          env=environ, cwd=ROOT, timeout=timeout)
    report = json.loads((out / "device_suite.json").read_text()) if (out / "device_suite.json").exists() else None
    return proc, report, out


def numbers(tree):
    if isinstance(tree, bool):
        return []
    if isinstance(tree, int | float):
        return [tree]
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in numbers(v)]
    return []


def test_the_blocker_refuses_the_absent_packages(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for name in ("grain", "gguf", "datasketch"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, env=env)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_smoke_run_measures_every_part_with_only_the_gpu_image_packages(tmp_path):
    proc, report, out = run_suite(tmp_path, "--smoke")
    assert report is not None, proc.stdout + proc.stderr
    failed = {name: part["errors"] for name, part in report["parts"].items() if part["status"] != "ok"}
    assert proc.returncode == 0 and not failed, f"{failed}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert tuple(report["parts"]) == PARTS and report["failed"] == 0
    for name, part in report["parts"].items():
        assert part["rows"] and part["summary"], name
        assert [x for x in numbers(part["rows"]) if x == x and x > 0], f"{name} measured no positive number"
    assert report["env"]["device"] and report["env"]["jax"]
    table = (out / "device_suite.md").read_text()
    assert f"jax {report['env']['jax']}" in table and "| flash |" in table and "| decode |" in table
    assert (out / "device_suite.log").stat().st_size > 0


def test_a_part_that_fails_is_recorded_and_counted_and_the_suite_goes_on(tmp_path):
    # no such JAX platform: every part raises when it first asks for a device
    proc, report, out = run_suite(tmp_path, "--smoke", "--parts", "calibration", "flash", env={"JAX_PLATFORMS": "nope"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert [p["status"] for p in report["parts"].values()] == ["failed", "failed"]
    for part in report["parts"].values():
        assert "nope" in part["errors"][0]["error"] and "Traceback" in part["errors"][0]["traceback_tail"]
    assert "| calibration | **failed**" in (out / "device_suite.md").read_text()


def test_a_part_past_its_time_box_is_stopped_and_counted(tmp_path):
    proc, report, _ = run_suite(tmp_path, "--smoke", "--parts", "flash", "--time-box-s", "0.5")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert report["parts"]["flash"]["status"] == "timeout"
    assert "time box" in report["parts"]["flash"]["errors"][-1]["error"]


def test_an_interrupted_suite_stops_its_part_and_writes_what_it_has(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SUITE), "--smoke", "--parts", "flash", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    log = out / "device_suite.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "===== flash" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    report = json.loads((out / "device_suite.json").read_text())
    assert proc.returncode == 1, output
    assert report["parts"]["flash"]["status"] == "interrupted" and "SIGTERM" in output


def test_parts_that_need_the_ceilings_bring_calibration_and_bad_flags_are_refused(tmp_path):
    proc, report, _ = run_suite(tmp_path, "--parts", "paged", "--budget-s", "1")
    assert proc.returncode == 2 and list(report["parts"]) == ["calibration", "paged"]
    assert {p["status"] for p in report["parts"].values()} == {"skipped"}
    proc, _, _ = run_suite(tmp_path, "--parts", "flash,nonsense")
    assert proc.returncode == 2 and "unknown part(s) nonsense" in proc.stderr


def load_parts():
    spec = importlib.util.spec_from_file_location("device_parts", SUITE.with_name("device_parts.py"))
    parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parts)
    return parts


def test_the_kernel_programs_lower_to_triton_at_the_device_shapes():
    """What the flash, paged and qmatmul parts compile on a GPU lowers for CUDA (no GPU needed): one Triton
    call per kernel, one call site in the matmul loop."""
    import jax
    import jax.numpy as jnp

    from kernels import flash_attention, paged_decode_attention, quantized_matmul

    parts = load_parts()
    S, bf16 = jax.ShapeDtypeStruct, jnp.bfloat16

    def triton_calls(f, *args):
        check = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
        exported = jax.export.export(jax.jit(f), platforms=["cuda"], disabled_checks=[check])(*args)
        return exported.mlir_module().count("__gpu$xla.gpu.triton")

    flash = parts.FLASH["device"]
    attn = parts.fwd_bwd(lambda q, k, v: flash_attention(q, k, v, causal=True, interpret=False))
    for seq, batch in flash["seq_batch"]:
        q = S((batch, seq, flash["heads"], flash["head_dim"]), bf16)
        kv = S((batch, seq, flash["kv_heads"], flash["head_dim"]), bf16)
        assert triton_calls(attn, q, kv, kv, q) == 3  # forward, dK/dV, dQ

    p = parts.PAGED["device"]
    pages_per_seq = p["context"] // p["page"]
    shape = (p["kv_heads"], p["batch"] * pages_per_seq, p["page"], p["head_dim"])
    q = S((p["batch"], p["heads"], p["head_dim"]), bf16)
    tables, lengths = S((p["batch"], pages_per_seq), jnp.int32), S((p["batch"],), jnp.int32)
    decode = lambda q, k, v, t, n, ks=None, vs=None: paged_decode_attention(q, k, v, t, n, k_scales=ks, v_scales=vs,
                                                                            interpret=False)
    assert triton_calls(decode, q, S(shape, bf16), S(shape, bf16), tables, lengths) == 1
    scales = S(shape[:3], jnp.float32)
    assert triton_calls(decode, q, S(shape, jnp.int8), S(shape, jnp.int8), tables, lengths, scales, scales) == 1

    mm = parts.QMATMUL["device"]
    w8 = lambda x, w, s: quantized_matmul(x, w, s, bits=8, interpret=False)
    w4 = lambda x, w, s, z: quantized_matmul(x, w, s, z, bits=4, group_size=128, interpret=False)
    for d_in, d_out in mm["shapes"]:
        for m in mm["ms"]:
            x, groups = S((m, d_in), bf16), (d_in // 128, d_out)
            assert triton_calls(parts.chained(w8, d_in, mm["chain"]), x, S((d_in, d_out), jnp.int8),
                                S((d_out,), bf16)) == 1
            assert triton_calls(parts.chained(w4, d_in, mm["chain"]), x, S((d_in // 2, d_out), jnp.uint8),
                                S(groups, bf16), S(groups, jnp.uint8)) == 1


def test_suite_settings_are_the_recipes():
    """The suite restates the recipes' model settings (their config files import grain); they must agree."""
    from intern_jax.config import Execution, load_config
    from intern_jax.train.config import load_train_config
    from intern_jax.train.finetune import load_finetune_config

    suite = load_parts()
    pretrain = load_train_config(ROOT / "configs/pretrain/internlm2_1_8b.py")
    ours = dataclasses.replace(load_config(ROOT / "configs/model/internlm2_1_8b.py"), **suite.PRETRAIN_MODEL)
    assert ours == pretrain.model and Execution(**suite.PRETRAIN_EXECUTION) == pretrain.execution

    recipe = load_finetune_config(ROOT / "configs/finetune/internlm2_7b_qlora_chat.py")
    assert suite.QLORA["quant"] == dataclasses.asdict(recipe.quant)
    assert suite.QLORA["lora"] == dataclasses.asdict(recipe.lora)
    assert (suite.QLORA["dtype"], suite.QLORA["base_dtype"], suite.QLORA["remat"], suite.QLORA["seq_len"]) == (
        recipe.train.execution.dtype, recipe.base_dtype, recipe.train.execution.remat, recipe.train.seq_len)
