"""Tiny model configs, random weights and reference peers for tests, benchmarks and quick experiments.

``random_params`` perturbs every leaf (norms around 1, biases around 0) with numpy, so no
weight is trivially 0 or 1 and no random-number program has to be compiled. Not for training.
``load_transformers_gguf`` is the independent peer (transformers reading a GGUF file).
``JSONHandler`` is the base of the stand-in HTTP endpoints that tests run on loopback.
"""

from __future__ import annotations

import http.server
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from intern_jax.config import ModelConfig
from intern_jax.model import internlm2

TINY = dict(
    vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
    intermediate_size=96, max_position_embeddings=64, rms_norm_eps=1e-5,
)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def random_params(cfg: ModelConfig, seed: int = 0, scale: float = 0.05, norm_scale: float = 0.1) -> dict:
    """Weights ``N(0, scale)``; norms ``1 + N(0, norm_scale)``, biases ``N(0, norm_scale)``."""
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(cfg.param_dtype)

    def leaf(spec: internlm2.ParamSpec):
        centre = 1.0 if spec.init == "ones" else 0.0
        sigma = scale if spec.init == "normal" else norm_scale
        return jnp.asarray(centre + sigma * rng.standard_normal(spec.shape), jnp.float32).astype(dtype)

    return jax.tree.map(leaf, internlm2.param_specs(cfg), is_leaf=lambda x: isinstance(x, internlm2.ParamSpec))


def fast_jit(f, **kw):
    """``jax.jit`` with XLA's backend optimisation off: quicker compiles for small test programs."""
    return jax.jit(f, compiler_options={"xla_backend_optimization_level": 0}, **kw)


def assert_close(actual, expected, tol, name=""):
    """Finite, and max abs error <= ``tol`` times max(1, max |expected|)."""
    actual = np.asarray(jnp.asarray(actual, jnp.float32))
    expected = np.asarray(jnp.asarray(expected, jnp.float32))
    assert np.isfinite(actual).all(), f"{name}: non-finite values"
    err = np.abs(actual - expected).max()
    bound = tol * max(1.0, np.abs(expected).max())
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


def reference_lm_loss_sums(params, cfg: ModelConfig, batches) -> tuple[float, float]:
    """(summed cross-entropy, target count) of contract batches from the model's full logits and
    a float64 numpy log-softmax: an independent check of the training code's fused, chunked loss."""
    total, count = 0.0, 0.0
    for batch in batches:
        logits, _ = internlm2.forward_jit(params, {k: np.asarray(v) for k, v in batch.items()}, cfg)
        logits = np.asarray(logits, np.float64)
        top = logits.max(-1)
        logz = np.log(np.exp(logits - top[..., None]).sum(-1)) + top
        picked = np.take_along_axis(logits, np.asarray(batch["targets"], np.int64)[..., None], -1)[..., 0]
        total += float(((logz - picked) * batch["loss_mask"]).sum())
        count += float(np.asarray(batch["loss_mask"]).sum())
    return total, count


def load_transformers_gguf(path):
    """transformers' own reading of a GGUF file, as the independent peer for parity tests and benchmarks.

    Uses ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)``; where that needs the
    optional ``accelerate`` package and it is absent, builds the same model from transformers'
    GGUF config and dequantized tensors (``load_gguf_checkpoint``). Needs torch and transformers.
    """
    import torch  # noqa: PLC0415  (optional: the dev extra)
    import transformers  # noqa: PLC0415
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint  # noqa: PLC0415

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


class JSONHandler(http.server.BaseHTTPRequestHandler):
    """A stand-in endpoint's request handler: ``send_json(status, payload)`` answers with a JSON body, and no
    request is logged to stderr. Subclasses write ``do_GET`` / ``do_POST``."""

    def send_json(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass
