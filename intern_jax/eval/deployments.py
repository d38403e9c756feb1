"""Deployment variants of one loaded model, evaluated side by side (``scripts/evaluate.py --deployments``).

LMDeploy reports the quality of its quantized deployments by running OpenCompass over each; here one
command builds every variant in memory from the one float model and evaluates them on the same datasets,
one summary column per variant (``MODEL[fp]``, ``MODEL[w8]``, ...). A variant is a weight format,
optionally joined with ``+kv8``:

- ``fp``: the model as loaded.
- ``w8``: 8-bit weights, round to nearest (symmetric int8, one scale per group): ``quantize_params``.
- ``w4``: 4-bit weights, round to nearest (min-max per group).
- ``awq4``: 4-bit weights after AWQ's activation-aware scale search on calibration text (the embedded
  standard-library docstrings unless a file is given), as ``scripts/quantize.py --method awq``.
- ``kv8``: the int8 KV cache (the float weights; ``w8+kv8``, ``awq4+kv8``: both). The cache stores keys
  and values as int8 with one scale per token and head, and attention reads them back dequantized, in
  generation (``Decoder.new_batch(kv_int8=True)``) and in log-likelihood scoring alike: the scored
  continuation attends over its context's int8 keys and values, and every token over its own.

Every variant is a ``DecoderLM`` over its own ``Decoder``; nothing here scores or decodes differently
from the plain evaluation except the cache's storage. A variant is built when it is first asked for an
answer (a fully cached variant under ``--reuse`` is never built), and building one releases the variant
built before it, so at most one quantized copy is held beside the loaded model.
"""

from __future__ import annotations

import dataclasses

from intern_jax.eval.model import DecoderLM, RequestCache
from intern_jax.inference import Decoder

WEIGHTS = {
    "fp": "the model as loaded",
    "w8": "8-bit weights, round to nearest",
    "w4": "4-bit weights, round to nearest",
    "awq4": "4-bit weights, AWQ scales from calibration text",
}
KV = {"kv8": "int8 KV cache"}
KNOWN = [*WEIGHTS, *KV, "w8+kv8", "w4+kv8", "awq4+kv8"]


@dataclasses.dataclass(frozen=True)
class Deployment:
    """One variant: its name, weight format (a ``WEIGHTS`` key) and whether the KV cache is int8."""

    name: str
    weights: str = "fp"
    kv_int8: bool = False


def parse_deployments(text: str) -> list[Deployment]:
    """``"fp,w8,awq4,kv8"`` -> deployments (a weight format, optionally ``+kv8``); unknown names, repeats
    and an empty list raise ``ValueError`` naming the known ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--deployments is empty; known deployments: {', '.join(KNOWN)} (WEIGHTS[+kv8])")
    out, seen = [], set()
    for name in names:
        parts = name.split("+")
        weights = [p for p in parts if p in WEIGHTS]
        kv = [p for p in parts if p in KV]
        if len(weights) + len(kv) != len(parts) or len(weights) > 1 or len(kv) > 1 or not parts:
            raise ValueError(f"--deployments: unknown deployment {name!r}; known deployments: "
                             f"{', '.join(KNOWN)} (a weight format {'/'.join(WEIGHTS)}, optionally +kv8)")
        dep = Deployment(name, weights[0] if weights else "fp", bool(kv))
        key = (dep.weights, dep.kv_int8)
        if key in seen:
            raise ValueError(f"--deployments: {name!r} repeats a deployment already listed")
        seen.add(key)
        out.append(dep)
    return out


def default_group_size(params) -> int:
    """128 where it divides every projection's input width, else the largest power of two that does
    (SmolLM2's 576-wide inputs: 64)."""
    import math  # noqa: PLC0415

    from intern_jax.model.quantized import PROJECTIONS  # noqa: PLC0415

    width = math.gcd(*(math.prod(params["layers"][k].shape[1: 1 + n]) for k, n in PROJECTIONS.items()))
    group = 128
    while group > 2 and width % group:
        group //= 2
    return group


# -- the int8 KV cache, in generation and scoring ---------------------------------------------------


class Int8KVDecoder(Decoder):
    """A ``Decoder`` whose every KV cache is int8: its batches (generation) and its scorer."""

    def new_batch(self, slots, capacity=None, *, paged=None, kv_int8=True, num_top_logprobs=0, stop_width=4):
        return super().new_batch(slots, capacity, paged=paged, kv_int8=True, num_top_logprobs=num_top_logprobs,
                                 stop_width=stop_width)

    def score(self, sequences, starts, *, batch_size=32, kv_int8=True):
        return super().score(sequences, starts, batch_size=batch_size, kv_int8=True)


# -- building the variants -----------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    """How the quantized variants are made: the weight group size (None: ``default_group_size``) and AWQ's
    calibration (``calib_text`` None: the embedded text; windows and their length)."""

    group_size: int | None = None
    calib_text: str | None = None
    calib_samples: int = 8
    calib_seq_len: int = 256


class _Builder:
    """Builds the variants of one loaded model, holding only the most recently built one."""

    def __init__(self, loaded, settings: Settings):
        if not hasattr(loaded, "params") or isinstance(loaded, Decoder):
            raise ValueError("--deployments needs a loaded model (load_model), not a Decoder")
        self.loaded = loaded
        self.settings = settings
        self.current: DeploymentLM | None = None

    def group_size(self) -> int:
        return self.settings.group_size or default_group_size(self.loaded.params)

    def check(self, deps: list[Deployment]) -> None:
        """Errors before any work: a quantized variant of a model that is already quantized, a group size
        that does not fit."""
        from intern_jax.model import quantized as q  # noqa: PLC0415

        for dep in deps:
            if dep.weights != "fp":
                q.check_params(self.loaded.params, self.loaded.config, 8 if dep.weights == "w8" else 4,
                               self.group_size())
            if dep.weights == "awq4" and self.loaded.tokenizer is None:
                raise ValueError("deployment awq4 needs the model's tokenizer to read its calibration text")

    def weights(self, dep: Deployment):
        """``(params, config)`` of the variant's weights."""
        from intern_jax.checkpoint.quantized import quantize_model  # noqa: PLC0415

        loaded = self.loaded
        if dep.weights == "fp":
            return loaded.params, loaded.config
        s = self.settings
        method, bits = {"w8": ("rtn", 8), "w4": ("rtn", 4), "awq4": ("awq", 4)}[dep.weights]
        packed, _ = quantize_model(loaded, method=method, bits=bits, group_size=self.group_size(),
                                   calib_text=s.calib_text, calib_samples=s.calib_samples,
                                   calib_seq_len=s.calib_seq_len)
        return packed.params, packed.config

    def build(self, lm: DeploymentLM) -> Decoder:
        if self.current is not None and self.current is not lm:
            self.current.__dict__.pop("decoder", None)  # release the previous variant
        self.current = None
        params, cfg = self.weights(lm.deployment)
        from intern_jax.config import Execution  # noqa: PLC0415

        dtype = getattr(getattr(self.loaded, "execution", None), "dtype", None)
        execution = Execution(dtype=dtype) if dtype is not None else None
        kind = Int8KVDecoder if lm.deployment.kv_int8 else Decoder
        decoder = kind(params, cfg, self.loaded.tokenizer, execution=execution)
        self.current = lm
        return decoder


class DeploymentLM(DecoderLM):
    """``DecoderLM`` over one deployment variant of a loaded model, its decoder built on first use."""

    def __init__(self, builder: _Builder, deployment: Deployment, name: str, *, batch_size: int = 16,
                 cache: RequestCache | None = None):
        self._builder = builder
        self.deployment = deployment
        self.tokenizer = builder.loaded.tokenizer
        self.name = name
        self.batch_size = max(1, int(batch_size))
        self.cache = cache or RequestCache(None)
        self.max_length = builder.loaded.config.max_position_embeddings

    def __getattr__(self, attr):
        if attr == "decoder":
            decoder = self._builder.build(self)
            self.__dict__["decoder"] = decoder
            return decoder
        raise AttributeError(f"{type(self).__name__} has no attribute {attr!r}")


def deployment_models(loaded, deployments: list[Deployment], base_name: str, *, batch_size: int = 16,
                      settings: Settings | None = None, cache=None) -> list[DeploymentLM]:
    """One ``DeploymentLM`` per deployment, named ``base_name[deployment]``; ``cache(name)``: its
    ``RequestCache`` (or None)."""
    builder = _Builder(loaded, settings or Settings())
    builder.check(deployments)
    models = []
    for dep in deployments:
        name = f"{base_name}[{dep.name}]"
        models.append(DeploymentLM(builder, dep, name, batch_size=batch_size,
                                   cache=cache(name) if cache is not None else None))
    return models
