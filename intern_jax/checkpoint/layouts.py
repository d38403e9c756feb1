"""Native params <-> Hugging Face-named tensors, for the InternLM2 and Llama layouts.

One table per layout says, for every native leaf, which HF tensors hold it and how to
turn them into the leaf and back; import and export both read that table, so the two
directions cannot drift apart. HF Linear weights are ``[out, in]``; native ones are
``[in, ...out]``. Both HF layouts use rotate-half RoPE on the stored weight order, as the
model does, so no row permutation happens here. No file I/O: hf.py and gguf.py feed it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from intern_jax.config import ModelConfig
from intern_jax.model import internlm2

LAYOUTS = ("internlm2", "llama")


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one native leaf (one layer's slice for ``layers/*``) maps to HF tensors.

    ``names`` use ``{i}`` for the layer index; ``to_native(cfg, *tensors) -> leaf`` and
    ``from_native(cfg, leaf) -> tuple of tensors`` (same order as ``names``).
    """

    names: tuple[str, ...]
    to_native: Callable
    from_native: Callable


def _t(cfg, w):  # HF [out, in] <-> native [in, out]
    return w.T


def _one(f):
    return lambda cfg, leaf: (f(cfg, leaf),)


def _ident(cfg, w):
    return w


def _wo_to_native(cfg, w):  # [E, H*D] -> [H, D, E]
    return w.T.reshape(cfg.num_heads, cfg.head_dim, w.shape[0])


def _wo_from_native(cfg, leaf):
    return leaf.reshape(-1, leaf.shape[-1]).T


def _packed_to_native(cfg, w):  # InternLM2 wqkv [K*(G+2)*D, E] -> [E, K, G+2, D]
    return w.reshape(cfg.num_kv_heads, cfg.q_per_kv + 2, cfg.head_dim, -1).transpose(3, 0, 1, 2)


def _packed_from_native(cfg, leaf):
    return leaf.transpose(1, 2, 3, 0).reshape(-1, leaf.shape[0])


def _packed_bias_to_native(cfg, b):
    return b.reshape(cfg.num_kv_heads, cfg.q_per_kv + 2, cfg.head_dim)


def _split_to_native(cfg, q, k, v):
    """q [H*D, in], k/v [K*D, in] -> [in, K, G+2, D] (query head h = k*G + g)."""
    K, G, D = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim
    rest = q.shape[1:]
    q = q.reshape(K, G, D, *rest)
    k = k.reshape(K, 1, D, *rest)
    v = v.reshape(K, 1, D, *rest)
    packed = np.concatenate([q, k, v], axis=1)  # [K, G+2, D, *in]
    return np.moveaxis(packed, (0, 1, 2), (-3, -2, -1)) if rest else packed


def _split_from_native(cfg, leaf):
    G = cfg.q_per_kv
    lead = leaf.ndim - 3  # 1 for weights [E, K, G+2, D], 0 for biases [K, G+2, D]
    packed = np.moveaxis(leaf, (-3, -2, -1), (0, 1, 2)) if lead else leaf  # [K, G+2, D, *in]
    rest = packed.shape[3:]
    q = packed[:, :G].reshape(-1, *rest)
    k = packed[:, G].reshape(-1, *rest)
    v = packed[:, G + 1].reshape(-1, *rest)
    return q, k, v


def _linear(name: str) -> Rule:
    return Rule((name,), _t, _one(_t))


def _plain(name: str) -> Rule:
    return Rule((name,), _ident, _one(_ident))


def layout_rules(layout: str) -> dict[tuple[str, ...], Rule]:
    """Native leaf path -> Rule, for every leaf any config can have."""
    if layout == "internlm2":
        p = "model.layers.{i}."
        return {
            ("tok_embeddings",): _plain("model.tok_embeddings.weight"),
            ("norm",): _plain("model.norm.weight"),
            ("output",): _linear("output.weight"),
            ("layers", "attention_norm"): _plain(p + "attention_norm.weight"),
            ("layers", "ffn_norm"): _plain(p + "ffn_norm.weight"),
            ("layers", "wqkv"): Rule((p + "attention.wqkv.weight",), _packed_to_native, _one(_packed_from_native)),
            ("layers", "wqkv_bias"): Rule(
                (p + "attention.wqkv.bias",), _packed_bias_to_native, _one(lambda cfg, b: b.reshape(-1))
            ),
            ("layers", "wo"): Rule((p + "attention.wo.weight",), _wo_to_native, _one(_wo_from_native)),
            ("layers", "wo_bias"): _plain(p + "attention.wo.bias"),
            ("layers", "w1"): _linear(p + "feed_forward.w1.weight"),
            ("layers", "w3"): _linear(p + "feed_forward.w3.weight"),
            ("layers", "w2"): _linear(p + "feed_forward.w2.weight"),
        }
    if layout == "llama":
        p = "model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        return {
            ("tok_embeddings",): _plain("model.embed_tokens.weight"),
            ("norm",): _plain("model.norm.weight"),
            ("output",): _linear("lm_head.weight"),
            ("layers", "attention_norm"): _plain(p + "input_layernorm.weight"),
            ("layers", "ffn_norm"): _plain(p + "post_attention_layernorm.weight"),
            ("layers", "wqkv"): Rule(
                tuple(a + f"{x}_proj.weight" for x in "qkv"),
                lambda cfg, q, k, v: _split_to_native(cfg, q, k, v),
                _split_from_native,
            ),
            ("layers", "wqkv_bias"): Rule(
                tuple(a + f"{x}_proj.bias" for x in "qkv"),
                lambda cfg, q, k, v: _split_to_native(cfg, q, k, v),
                _split_from_native,
            ),
            ("layers", "wo"): Rule((a + "o_proj.weight",), _wo_to_native, _one(_wo_from_native)),
            ("layers", "wo_bias"): _plain(a + "o_proj.bias"),
            ("layers", "w1"): _linear(m + "gate_proj.weight"),
            ("layers", "w3"): _linear(m + "up_proj.weight"),
            ("layers", "w2"): _linear(m + "down_proj.weight"),
            ("layers", "w1_bias"): _plain(m + "gate_proj.bias"),
            ("layers", "w3_bias"): _plain(m + "up_proj.bias"),
            ("layers", "w2_bias"): _plain(m + "down_proj.bias"),
        }
    raise ValueError(f"layout {layout!r} is not supported; use one of {LAYOUTS}")


# Tensors a checkpoint may carry that hold nothing the model needs.
_REDUNDANT = re.compile(r".*\.rotary_emb\.inv_freq$")


def _native_leaves(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = {}
    for path, leaf in internlm2.abstract(cfg).items():
        if isinstance(leaf, dict):
            flat.update({(path, k): v.shape for k, v in leaf.items()})
        else:
            flat[(path,)] = leaf.shape
    return flat


def expected_names(cfg: ModelConfig, layout: str) -> list[str]:
    rules = layout_rules(layout)
    out = []
    for path in _native_leaves(cfg):
        layers = range(cfg.num_layers) if path[0] == "layers" else [None]
        out.extend(name.format(i=i) for name in rules[path].names for i in layers)
    return out


def params_from_tensors(
    get: Callable[[str], np.ndarray],
    names: set[str],
    cfg: ModelConfig,
    layout: str,
    dtype,
    source: str,
    progress: bool = False,
    skip: frozenset = frozenset(),
) -> dict:
    """The native params tree (numpy, ``dtype``) from HF-named tensors.

    ``get(name)`` returns one tensor as stored; ``names`` is everything the source holds.
    Missing tensors, tensors of the wrong shape and tensors nothing uses are errors.
    Leaves in ``skip`` (paths such as ``("layers", "wqkv")``) are left out: the caller builds them.
    """
    rules = layout_rules(layout)
    leaves = _native_leaves(cfg)
    wanted = expected_names(cfg, layout)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(
            f"{source} has no tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else "")
            + f"; is this a {layout} checkpoint matching its config.json?"
        )
    extra = sorted(set(names) - set(wanted))
    if cfg.tie_word_embeddings:  # a tied head stored anyway is the embedding itself
        extra = [n for n in extra if n not in rules[("output",)].names]
    extra = [n for n in extra if not _REDUNDANT.match(n)]
    if extra:
        raise ValueError(
            f"{source} holds tensor(s) the {layout} config does not use: {extra[:5]}"
            + (f" (and {len(extra) - 5} more)" if len(extra) > 5 else "")
            + "; check attention_bias / mlp_bias / tie_word_embeddings in config.json"
        )
    dtype = np.dtype(dtype)
    jobs = [(path, i) for path in leaves if path not in skip
            for i in (range(cfg.num_layers) if path[0] == "layers" else [None])]
    bar = progress_bar(len(jobs), progress, f"converting {Path(source).name}")
    out: dict = {"layers": {}}
    for path, i in jobs:
        rule = rules[path]
        hf_names = [n.format(i=i) for n in rule.names]
        tensors = [np.asarray(get(n), dtype=np.float32) for n in hf_names]
        shape = leaves[path] if i is None else leaves[path][1:]
        try:
            value = rule.to_native(cfg, *tensors)
        except ValueError:
            value = None
        if value is None or value.shape != shape:
            got = ", ".join(f"{n} {list(t.shape)}" for n, t in zip(hf_names, tensors, strict=True))
            raise ValueError(
                f"{source}: {got} do not fit native '{'/'.join(path)}' of shape {list(shape)} for this config"
            )
        if i is None:
            out[path[0]] = value.astype(dtype)
        else:
            target = out["layers"].get(path[1])
            if target is None:
                target = out["layers"][path[1]] = np.empty(leaves[path], dtype)
            target[i] = value
        bar.update(1)
    bar.close()
    return out


def tensors_from_params(params, cfg: ModelConfig, layout: str) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, tensor) pairs of ``params`` in ``layout``, in native dtype."""
    rules = layout_rules(layout)
    for path in _native_leaves(cfg):
        rule = rules[path]
        leaf = np.asarray(params[path[0]] if len(path) == 1 else params["layers"][path[1]])  # one host copy
        for i in range(cfg.num_layers) if path[0] == "layers" else [None]:
            value = leaf if i is None else leaf[i]
            for name, t in zip(rule.names, rule.from_native(cfg, value), strict=True):
                yield name.format(i=i), np.ascontiguousarray(t)


def check_params(params, cfg: ModelConfig, what: str) -> None:
    """Raise unless ``params`` has exactly the leaves and shapes ``cfg`` declares."""
    import jax  # noqa: PLC0415

    want = jax.tree.map(lambda a: a.shape, internlm2.abstract(cfg))
    try:
        got = jax.tree.map(lambda x: tuple(x.shape), params)
    except (AttributeError, TypeError) as e:  # not a tree of arrays
        raise ValueError(f"{what} is not a params tree ({e})") from None
    if got != want:
        raise ValueError(f"{what} do not match the config: expected shapes {want}, got {got}")


def progress_bar(total: int, enabled: bool, desc: str):
    if enabled:
        from tqdm.auto import tqdm  # noqa: PLC0415

        return tqdm(total=total, desc=desc, unit="tensor")

    class _Silent:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Silent()
