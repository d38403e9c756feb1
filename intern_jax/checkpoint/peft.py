"""LoRA adapters -> a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).

The adapter names follow the Hugging Face layout of the base (InternLM2 ``wqkv`` / ``wo`` /
``w1-3``, or Llama ``q/k/v/o_proj`` and ``gate/up/down_proj``), through the same layout table
(layouts.py) that converts the weights: ``b`` is mapped like the weight it adapts (with the rank
in place of the input axis), ``a`` is shared by every module a packed weight splits into (the
Llama ``q/k/v_proj`` of ``wqkv``). ``PeftModel.from_pretrained`` on the base's transformers model
then computes what our LoRA forward does. Writing only: PEFT adapters are not read back here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from intern_jax.checkpoint import gguf, hf, layouts
from intern_jax.checkpoint.run import load_adapters
from intern_jax.config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def base_layout(path) -> str:
    """``llama`` or ``internlm2``: the Hugging Face layout whose module names the base model's
    transformers class uses (GGUF: its architecture; HF: config.json; native: internlm2)."""
    from intern_jax.checkpoint import detect_format  # noqa: PLC0415  (the package imports this module)

    path = Path(path)
    kind = detect_format(path)
    if kind == "gguf":
        file = path if path.is_file() else sorted(path.glob("*.gguf"))[0]
        field = gguf.open_reader(file).fields.get("general.architecture")
        return "internlm2" if field is not None and field.contents() == "internlm2" else "llama"
    if kind == "hf":
        return hf.read_config(path)[1]
    return "internlm2"


def _module(name: str) -> str:
    """HF weight name -> module path (``model.layers.0.self_attn.q_proj.weight`` -> ``...q_proj``)."""
    if not name.endswith(".weight"):
        raise ValueError(f"{name} is not a weight tensor")
    return name[: -len(".weight")]


def peft_tensors(cfg: ModelConfig, adapters: dict, layout: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """PEFT state dict (``base_model.model.<module>.lora_A.weight [r, in]`` / ``lora_B.weight [out, r]``)
    and the target module short names, for stacked adapters ``{"layers": {leaf: {"a", "b"}}}``."""
    rules = layouts.layout_rules(layout)
    extra = sorted(k for k in adapters if k != "layers")
    if extra:
        raise ValueError(f"adapters outside layers/ cannot be exported: {extra}")
    tensors, targets = {}, set()
    for leaf, ab in adapters.get("layers", {}).items():
        rule = rules.get(("layers", leaf))
        if rule is None:
            raise ValueError(f"adapter on layers/{leaf} has no {layout} module to export to")
        a_all, b_all = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
        for i in range(cfg.num_layers):
            a, b = a_all[i], b_all[i]  # a [in, r], b [r, *out]
            b_parts = rule.from_native(cfg, b)  # per HF module: [out, r]
            for name, b_hf in zip(rule.names, b_parts, strict=True):
                module = _module(name.format(i=i))
                targets.add(module.rsplit(".", 1)[-1])
                tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a.T)
                tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b_hf)
    return tensors, sorted(targets)


def save_peft(directory, cfg: ModelConfig, adapters: dict, lora, *, layout: str, base_model_name: str = "",
              dtype: str | None = None) -> Path:
    """Write ``adapters`` (LoraConfig ``lora``) as a PEFT LoRA adapter for the ``layout`` base model."""
    import peft  # noqa: PLC0415
    from safetensors.numpy import save_file  # noqa: PLC0415

    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"output {directory} exists and is not empty; choose a new one")
    tensors, targets = peft_tensors(cfg, adapters, layout)
    if dtype is not None:
        import ml_dtypes  # noqa: PLC0415,F401  (numpy bfloat16)

        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    directory.mkdir(parents=True, exist_ok=True)
    config = peft.LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
        bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model_name or None,
    )
    config.save_pretrained(str(directory))
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    return directory


def export_peft_run(run_dir, directory, *, dtype: str | None = None, step: int | None = None) -> Path:
    """The adapters of a LoRA / QLoRA run directory as a PEFT adapter for its base model."""
    record, base, lora, adapters = load_adapters(run_dir, step)
    layout = base_layout(record["base_model"])
    save_peft(directory, base.config, adapters, lora, layout=layout, base_model_name=record["base_model"],
              dtype=dtype)
    (Path(directory) / "intern_jax_run.json").write_text(
        json.dumps({"run": str(Path(run_dir).absolute()), "base_model": record["base_model"], "layout": layout},
                   indent=2) + "\n"
    )
    return Path(directory)
