"""Activation-aware weight quantization (AWQ, Lin et al. 2024): per-input-channel scales, then RTN.

Salient input channels (large mean activation) lose less to rounding when their weight rows are
scaled up by ``s`` before quantization and the input divided by ``s``. Per block, for the inputs of
``wqkv`` (after ``attention_norm``), of ``w1``/``w3`` (after ``ffn_norm``) and of ``w2`` (the gated
activation), a grid over ``alpha`` in ``s = mean|x| ** alpha`` (normalised by ``sqrt(max * min)``)
picks the ``s`` whose quantized product is closest to the float one on calibration activations:
the concatenated q/k/v outputs, the whole MLP output for ``w1``/``w3``, ``w2``'s output. ``s`` is
folded exactly into the preceding norm (or into ``w3``'s output columns for ``w2``), so the float
model is unchanged and nothing extra runs at inference. ``wo`` keeps plain RTN by default, as AutoAWQ
does under grouped-query attention; with ``scale_wo`` its scale is shared by the query heads of one kv
head (input channel ``(h, d)`` comes from value channel ``(h // G, d)``) and folded into the value
columns of ``wqkv`` (on SmolLM2 at W4 g64 it changed held-out perplexity by nothing measurable).
AutoAWQ's additional clipping search is not done. Calibration activations come from one eager
forward of the float model with recording weights (the model's own code, no second forward).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from intern_jax.config import ModelConfig
from intern_jax.model import internlm2, layers, quantized

GRID = 20


@dataclasses.dataclass
class _Stats:
    """Running mean |x| per input channel and a sample of input rows, for one projection input."""

    abs_sum: np.ndarray | None = None
    count: int = 0
    rows: list = dataclasses.field(default_factory=list)


class _Recorder:
    """A structured weight that records its input, then multiplies as the wrapped weight does."""

    def __init__(self, w, stats: _Stats | None, keep: int, rng: np.random.Generator):
        self.w, self.stats, self.keep, self.rng = w, stats, keep, rng

    @property
    def shape(self):
        return self.w.shape

    def matmul(self, x):
        if self.stats is not None:
            flat = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
            st = self.stats
            st.abs_sum = np.abs(flat).sum(0) + (0 if st.abs_sum is None else st.abs_sum)
            st.count += flat.shape[0]
            st.rows.append(flat[self.rng.choice(flat.shape[0], min(self.keep, flat.shape[0]), replace=False)])
        return layers.linear(x, self.w)

    def astype(self, dtype):
        return _Recorder(self.w.astype(dtype), self.stats, self.keep, self.rng)

    def reshape(self, *shape):
        return _Recorder(self.w.reshape(*shape), self.stats, self.keep, self.rng)


def collect_activations(params, cfg: ModelConfig, batches, keep_rows: int = 256, seed: int = 0):
    """Per layer, for ``attn`` (wqkv's input), ``attn_out`` (wo's), ``ffn`` (w1/w3's) and ``mlp_act``
    (w2's): the mean |x| per channel and up to ``keep_rows`` sampled rows per batch.
    ``batches``: ``tokens [B, T]`` arrays."""
    rng = np.random.default_rng(seed)
    stats = [{k: _Stats() for k in ("attn", "attn_out", "ffn", "mlp_act")} for _ in range(cfg.num_layers)]
    blocks = []
    for i in range(cfg.num_layers):
        p = jax.tree.map(lambda w, i=i: w[i], params["layers"])
        record = {"wqkv": "attn", "wo": "attn_out", "w1": "ffn", "w2": "mlp_act"}
        for name in ("wqkv", "wo", "w1", "w3", "w2"):
            p[name] = _Recorder(p[name], stats[i][record[name]] if name in record else None, keep_rows, rng)
        blocks.append(p)
    model = {**params, "layers": blocks}
    for tokens in batches:
        internlm2.hidden_states(model, {"tokens": jnp.asarray(tokens, jnp.int32)}, cfg)
    out = []
    for layer in stats:
        out.append({k: (st.abs_sum / st.count, np.concatenate(st.rows)) for k, st in layer.items()})
    return out


def _candidates(mean_abs):
    """``[GRID, in]`` scales ``mean|x| ** alpha`` for alpha in 0, 1/GRID, ..., normalised by sqrt(max*min)."""
    alphas = jnp.arange(GRID, dtype=jnp.float32) / GRID
    s = jnp.maximum(mean_abs, 1e-4)[None, :] ** alphas[:, None]
    s = s / jnp.sqrt(s.max(axis=1, keepdims=True) * s.min(axis=1, keepdims=True))
    return jnp.maximum(s, 1e-4)


def _search(loss, mean_abs):
    """The candidate scale with the smallest ``loss(s)``, and every candidate's loss."""
    cands = _candidates(mean_abs)
    losses = jax.lax.map(loss, cands)
    return cands[jnp.argmin(losses)], losses


def _scaled_q(w, s, bits, group_size):
    """``Q(diag(s) w) / s``: the effective weight once ``s`` is folded into the input."""
    return quantized.fake_quantize(w * s[:, None], bits, group_size) / s[:, None]


def _mse(a, b):
    return jnp.mean(jnp.square(a - b))


def search_linear_scale(ws, x, mean_abs, bits: int, group_size: int):
    """The AWQ scale ``[in]`` for weights ``ws`` (each ``[in, out]``) sharing input rows ``x [n, in]``,
    minimising the error of their concatenated outputs; and the losses of the grid (alpha = 0 is RTN)."""
    w = jnp.concatenate([a.reshape(a.shape[0], -1) for a in ws], axis=1).astype(jnp.float32)
    ref = x @ w
    return _search(lambda s: _mse(x @ _scaled_q(w, s, bits, group_size), ref), mean_abs)


def search_mlp_scale(w1, w3, w2, x, mean_abs, bits: int, group_size: int):
    """The AWQ scale for ``w1``/``w3``'s input, minimising the error of the whole MLP's output."""
    ref = (jax.nn.silu(x @ w1) * (x @ w3)) @ w2

    def loss(s):
        return _mse((jax.nn.silu(x @ _scaled_q(w1, s, bits, group_size)) * (x @ _scaled_q(w3, s, bits, group_size)))
                    @ w2, ref)

    return _search(loss, mean_abs)


def awq_params(params, cfg: ModelConfig, activations, bits: int, group_size: int, *, scale_wo: bool = False):
    """Float params with the AWQ scales searched on ``activations`` (``collect_activations``) folded in:
    the same function as ``params``, ready for ``quantized.quantize_params``. Also returns, per layer, the
    mean-squared output error at the chosen scale relative to RTN's (alpha = 0), for reporting."""
    quantized.check_quantization(bits, group_size)
    quantized.check_not_quantized(params)
    lin = jax.jit(search_linear_scale, static_argnums=(3, 4))
    mlp = jax.jit(search_mlp_scale, static_argnums=(5, 6))
    L = params["layers"]
    new = {k: np.array(v, np.float32) for k, v in L.items()}
    ratios = []
    for i, act in enumerate(activations):
        f32 = lambda name, i=i: jnp.asarray(L[name][i], jnp.float32)  # noqa: E731
        E = cfg.hidden_size
        mean, x = (jnp.asarray(a) for a in act["attn"])
        s_attn, l_attn = lin([f32("wqkv")], x, mean, bits, group_size)
        K, G, D = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim
        s_o, l_o = jnp.ones(K * G * D), jnp.ones(1)  # RTN for wo unless asked
        if scale_wo:
            mean, x = (jnp.asarray(a) for a in act["attn_out"])
            # one scale per value channel, shared by the G query heads that read it
            mean = jnp.repeat(mean.reshape(K, G, D).mean(axis=1, keepdims=True), G, axis=1).reshape(-1)
            s_o, l_o = lin([f32("wo").reshape(K * G * D, -1)], x, mean, bits, group_size)
        mean, x = (jnp.asarray(a) for a in act["ffn"])
        s_ffn, l_ffn = mlp(f32("w1"), f32("w3"), f32("w2"), x, mean, bits, group_size)
        mean, x = (jnp.asarray(a) for a in act["mlp_act"])
        s_w2, l_w2 = lin([f32("w2")], x, mean, bits, group_size)
        s_attn, s_o, s_ffn, s_w2 = (np.asarray(a) for a in (s_attn, s_o, s_ffn, s_w2))
        new["wqkv"][i] *= s_attn.reshape(E, *([1] * (new["wqkv"].ndim - 2)))
        new["attention_norm"][i] /= s_attn
        t = s_o.reshape(K, G, D)[:, 0]  # [K, D]: one scale per value channel
        new["wqkv"][i][:, :, G + 1, :] /= t
        if "wqkv_bias" in new:
            new["wqkv_bias"][i][:, G + 1, :] /= t
        new["wo"][i] *= s_o.reshape(K * G, D, 1)
        new["w1"][i] *= s_ffn[:, None]
        new["w3"][i] *= s_ffn[:, None]
        new["ffn_norm"][i] /= s_ffn
        new["w3"][i] /= s_w2[None, :]
        if "w3_bias" in new:
            new["w3_bias"][i] /= s_w2
        new["w2"][i] *= s_w2[:, None]
        ratios.append({k: float(jnp.min(v) / jnp.maximum(v[0], 1e-30))
                       for k, v in (("wqkv", l_attn), ("wo", l_o), ("w1_w3", l_ffn), ("w2", l_w2))})
    dtype = jnp.dtype(cfg.param_dtype)
    out = {**params, "layers": {k: jnp.asarray(v, dtype) for k, v in new.items()}}
    return out, ratios


def quantize_awq(params, cfg: ModelConfig, batches, bits: int, group_size: int, *, head: bool = False,
                 keep_rows: int = 256, seed: int = 0, scale_wo: bool = False):
    """``(packed params, cfg, report)``: activations collected on ``batches``, scales searched and folded,
    then round-to-nearest (``quantized.quantize_params``)."""
    quantized.check_params(params, cfg, bits, group_size, head=head)  # before the long collection
    acts = collect_activations(params, cfg, batches, keep_rows, seed)
    scaled, ratios = awq_params(params, cfg, acts, bits, group_size, scale_wo=scale_wo)
    packed, cfg = quantized.quantize_params(scaled, cfg, bits, group_size, head=head)
    report = {k: float(math.fsum(r[k] for r in ratios) / len(ratios)) for k in ratios[0]}
    return packed, cfg, report
