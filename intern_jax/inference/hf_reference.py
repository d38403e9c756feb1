"""transformers' own reading of a GGUF file, as the independent peer for parity tests and benchmarks.

Uses ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)``; where that needs the
optional ``accelerate`` package and it is absent, builds the same model from transformers'
GGUF config and dequantized tensors (``load_gguf_checkpoint``). Needs torch and transformers.
"""

from __future__ import annotations

from pathlib import Path


def load_transformers_gguf(path):
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = Path(path)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except ValueError as e:
        if "accelerate" not in str(e):
            raise
        config = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
        if missing or unexpected:
            raise ValueError(f"transformers' GGUF tensors do not fit its model: missing {missing}, "
                             f"unexpected {unexpected}") from e
        model.tie_weights()
    return model.eval()
