"""Train step: sharding-invariance, gradient accumulation, NaN guard, frozen/assemble hook, optimizer."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from intern_jax.config import ConfigError, Execution
from intern_jax.sharding import make_mesh
from intern_jax.testing import random_params, tiny_config
from intern_jax.train.config import OptimizerConfig, ParallelConfig, TrainConfig
from intern_jax.train.optimizer import learning_rate_schedule, make_optimizer
from intern_jax.train.step import make_train_step, shard_batch
from intern_jax.train.synthetic import SyntheticData, synthetic_batch

FAST = {"xla_backend_optimization_level": 0}
CFG = tiny_config(vocab_size=128)
B, T = 8, 32


def _train_cfg(**parallel):
    # Adam's eps at 1e-6, not 1e-8: Adam moves a weight by about lr * g / (|g| + eps), so a weight whose
    # gradient is near eps (or near zero) moves by an amount that changes with g's last bits, and sharding
    # sums the gradient in another order (see _assert_same_trajectory)
    return TrainConfig(model=CFG, steps=50, batch_size=B, seq_len=T, parallel=ParallelConfig(**parallel),
                       optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1, eps=1e-6))


def _run(parallel: dict, n_devices: int, batches, params, train_cfg=None):
    """(losses, final params, last metrics, grad norms) of one step per batch."""
    tc = train_cfg or _train_cfg(**parallel)
    mesh = make_mesh(tc.parallel.mesh_shape(), jax.devices()[:n_devices])
    ts = make_train_step(CFG, tc, mesh, compiler_options=FAST)
    state = ts.init_state(jax.device_put(params, ts.state_shardings["params"]))
    losses, grad_norms = [], []
    for b in batches:
        state, m = ts.step(state, None, shard_batch(b, ts.batch_sharding))
        losses.append(float(m["loss"]))
        grad_norms.append(float(m["grad_norm"]))
    return losses, jax.device_get(state["params"]), m, grad_norms


@pytest.fixture(scope="module")
def reference(seed):
    data = SyntheticData(seed=seed)
    batches = [synthetic_batch(data, CFG.vocab_size, B, T, i) for i in range(3)]
    params = random_params(CFG, seed=seed % 1000)
    losses, final, _, grad_norms = _run({"fsdp": 1}, 1, batches, params)
    return seed, batches, params, losses, final, grad_norms


def _assert_same_trajectory(got, reference, seed):
    """Losses (atol 1e-5) and the reported gradient norms (rtol 1e-5) of every step, and the final params
    to 1e-4, a hundredth of one step's learning rate. The norms matter: clipping plus Adam cancel a
    constant gradient scale, so losses and params alone would not show a sum where a mean belongs. The
    params' bound is not tighter because Adam amplifies the summation order's rounding for weights whose
    gradient is about zero: a few of them (one in 8,192, some seeds) land 1e-5 to 1e-4 apart."""
    losses, params, _, grad_norms = got
    _, _, _, want, want_params, want_norms = reference
    np.testing.assert_allclose(losses, want, atol=1e-5, rtol=0, err_msg=f"seed {seed}: losses")
    np.testing.assert_allclose(grad_norms, want_norms, rtol=1e-5, err_msg=f"seed {seed}: grad_norm")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want_params)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0, err_msg=f"seed {seed}: params")


@pytest.mark.parametrize(
    "parallel",
    [
        {"fsdp": 4, "tensor": 2, "zero": "full"},
        {"data": 2, "fsdp": 2, "tensor": 2, "zero": "hybrid"},
        {"data": 8, "fsdp": 1, "zero": "none"},
        {"data": 2, "fsdp": 1, "sequence": 2, "tensor": 2, "zero": "full"},
        {"fsdp": 2, "sequence": 4, "zero": "hybrid"},
    ],
    ids=["fsdp4xtp2", "hybrid_zero", "pure_dp", "dp2xsp2xtp2", "fsdp2xsp4"],
)
def test_sharded_step_matches_single_device_losses_params_and_grad_norms(reference, parallel):
    _assert_same_trajectory(_run(parallel, 8, reference[1], reference[2]), reference, reference[0])


def test_grad_accumulation_equals_one_big_batch_losses_params_and_grad_norms(reference):
    _assert_same_trajectory(_run({"fsdp": 1, "micro_batches": 4}, 1, reference[1], reference[2]), reference,
                            reference[0])


@pytest.fixture(scope="module")
def independent_gradient(reference):
    """Gradient on the first batch of the masked-mean cross-entropy (optax) over the full logits: none of
    the step's loss code."""
    from intern_jax.model import internlm2

    _, batches, params = reference[:3]
    batch = batches[0]

    def loss(p):
        logits, _ = internlm2.forward(p, {k: jnp.asarray(batch[k]) for k in ("tokens", "positions", "segment_ids")},
                                      CFG)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(batch["targets"]))
        return (ce * batch["loss_mask"]).sum() / batch["loss_mask"].sum()

    return jax.device_get(jax.jit(jax.grad(loss))(params))


SGD_LR = 0.5


@pytest.mark.parametrize(
    "parallel,devices",
    [({"fsdp": 1}, 1), ({"fsdp": 1, "micro_batches": 4}, 1),
     ({"data": 2, "fsdp": 2, "tensor": 2, "zero": "hybrid"}, 8)],
    ids=["one_device", "micro_batches4", "dp2xfsdp2xtp2"],
)
def test_sgd_without_clipping_moves_params_by_minus_lr_times_the_independent_gradient(reference, parallel, devices,
                                                                                      independent_gradient,
                                                                                      monkeypatch):
    """Plain SGD, no clipping: the update is proportional to the gradient, so a gradient scaled anywhere
    between the loss and the optimizer (a sum over micro-batches, devices or processes where a mean
    belongs) moves params by that factor. The expected gradient is jax.grad of an optax cross-entropy."""
    from intern_jax.train import step as step_module

    seed, batches, params = reference[:3]
    monkeypatch.setattr(step_module, "make_optimizer", lambda cfg, total_steps: optax.sgd(SGD_LR))
    tc = dataclasses.replace(_train_cfg(**parallel), optimizer=OptimizerConfig(learning_rate=SGD_LR, warmup_steps=0,
                                                                               grad_clip=0.0, weight_decay=0.0))
    _, got, _, (grad_norm,) = _run(parallel, devices, batches[:1], params, train_cfg=tc)
    want_grad = independent_gradient
    want_norm = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in jax.tree.leaves(want_grad)))
    assert math.isclose(grad_norm, want_norm, rel_tol=1e-5), f"seed {seed}: grad_norm {grad_norm} vs {want_norm}"
    for path, new in jax.tree_util.tree_leaves_with_path(got):
        old = functools.reduce(lambda t, k: t[k.key], path, params)
        g = np.asarray(functools.reduce(lambda t, k: t[k.key], path, want_grad), np.float64)
        step = np.asarray(new, np.float64) - np.asarray(old, np.float64)
        # float32 params carry the step to within an ulp of their own size
        bound = 1e-5 * SGD_LR * np.abs(g).max() + 2 * np.finfo(np.float32).eps * np.abs(np.asarray(old)).max()
        np.testing.assert_allclose(step, -SGD_LR * g, rtol=0, atol=bound,
                                   err_msg=f"seed {seed}: {jax.tree_util.keystr(path)}")


def test_loss_is_masked_token_mean_of_cross_entropy(reference):
    """The step's loss equals an independent optax cross-entropy over the masked tokens."""
    from intern_jax.model import internlm2

    seed, batches, params, want = reference[:4]
    b = batches[0]
    logits, _ = internlm2.forward(params, {k: jnp.asarray(b[k]) for k in ("tokens", "positions", "segment_ids")}, CFG)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(b["targets"]))
    expected = float((ce * b["loss_mask"]).sum() / b["loss_mask"].sum())
    assert math.isclose(want[0], expected, rel_tol=1e-5), f"seed {seed}: {want[0]} vs {expected}"


def test_non_finite_step_is_skipped_and_counted(reference):
    seed, batches, params = reference[:3]
    tc = _train_cfg(fsdp=1)
    ts = make_train_step(CFG, tc, make_mesh({"fsdp": 1}, jax.devices()[:1]), compiler_options=FAST)
    state = ts.init_state(jax.device_put(params, ts.state_shardings["params"]))
    bad = dict(batches[0], loss_mask=np.where(np.arange(T) == 3, np.nan, batches[0]["loss_mask"]).astype(np.float32))
    before = jax.device_get(state["params"])
    for i in range(2):
        state, m = ts.step(state, None, shard_batch(bad, ts.batch_sharding))
        assert not bool(m["finite"]) and int(m["bad_steps"]) == i + 1
    for a, b in zip(jax.tree.leaves(jax.device_get(state["params"])), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    assert int(state["updates"]) == 0 and int(state["step"]) == 2
    state, m = ts.step(state, None, shard_batch(batches[0], ts.batch_sharding))
    assert bool(m["finite"]) and int(m["bad_steps"]) == 0 and int(m["skipped"]) == 2
    assert int(state["updates"]) == 1


def test_frozen_params_are_not_updated_or_in_optimizer_state(reference):
    """The fine-tuning hook: only `trainable` is optimised; `frozen` flows in through `assemble`."""
    seed, batches, params = reference[:3]
    trainable = {"norm": params["norm"], "output": params["output"]}
    frozen = {k: v for k, v in params.items() if k not in trainable}
    mesh = make_mesh({"fsdp": 1}, jax.devices()[:1])
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    ts = make_train_step(
        CFG, _train_cfg(fsdp=1), mesh, assemble=lambda tr, fr: {**fr, **tr},
        abstract_trainable=jax.eval_shape(lambda: trainable), trainable_shardings=repl, frozen_shardings=repl,
        compiler_options=FAST,
    )
    state = ts.init_state(trainable)
    frozen_dev = jax.device_put(frozen, repl)
    state, m = ts.step(state, frozen_dev, shard_batch(batches[0], ts.batch_sharding))
    state, m = ts.step(state, frozen_dev, shard_batch(batches[1], ts.batch_sharding))
    assert bool(m["finite"])
    opt_leaves = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0)
    assert opt_leaves == 2 * sum(x.size for x in jax.tree.leaves(trainable))  # mu and nu of trainable only
    assert not np.allclose(state["params"]["output"], trainable["output"])
    for a, b in zip(jax.tree.leaves(frozen_dev), jax.tree.leaves(frozen)):  # not donated, unchanged
        np.testing.assert_array_equal(a, b)


def test_schedule_matches_hand_computed_warmup_cosine():
    cfg = OptimizerConfig(learning_rate=2e-3, warmup_steps=10, min_lr_ratio=0.1, decay_steps=110)
    schedule = learning_rate_schedule(cfg, total_steps=500)
    for count in [0, 1, 5, 10, 11, 60, 109, 110, 111, 400]:
        if count < 10:
            want = 2e-3 * count / 10
        else:
            progress = min((count - 10) / 100, 1.0)
            want = 2e-4 + 0.5 * (2e-3 - 2e-4) * (1 + math.cos(math.pi * progress))
        assert math.isclose(float(schedule(count)), want, rel_tol=1e-5, abs_tol=1e-12), count


@pytest.mark.parametrize("kind", ["linear", "constant", "wsd"])
def test_other_schedules_match_hand_computed_values(kind):
    # warmup 10, decay ends at 110; wsd keeps the peak for 80 steps after warmup, then 20 linear ones
    cfg = OptimizerConfig(learning_rate=2e-3, warmup_steps=10, min_lr_ratio=0.1, decay_steps=110, schedule=kind,
                          wsd_decay_fraction=0.2)
    schedule = learning_rate_schedule(cfg, total_steps=500)
    for count in [0, 5, 10, 11, 60, 89, 90, 91, 100, 109, 110, 400]:
        if count < 10:
            want = 2e-3 * count / 10
        elif kind == "linear":
            want = 2e-3 + (2e-4 - 2e-3) * min((count - 10) / 100, 1.0)
        elif kind == "constant":
            want = 2e-3
        else:
            want = 2e-3 if count <= 90 else 2e-3 + (2e-4 - 2e-3) * min((count - 90) / 20, 1.0)
        assert math.isclose(float(schedule(count)), want, rel_tol=1e-5, abs_tol=1e-12), (kind, count)
    with pytest.raises(ConfigError, match="optimizer.schedule='step'; use one of cosine, linear, constant, wsd"):
        OptimizerConfig(schedule="step")


def test_adamw_update_matches_hand_computed_step(rng):
    """Clipping, bias-corrected Adam and decoupled decay that skips norm scales, written out by hand."""
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32), "norm": rng.standard_normal(4).astype(np.float32)}
    grads = {k: 3.0 * rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    cfg = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, weight_decay=0.1, grad_clip=1.0)
    opt = make_optimizer(cfg, total_steps=100)
    updates, _ = opt.update(grads, opt.init(params), params)
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    lr = 1e-2  # step 0 of a schedule without warmup: the peak
    for name in params:
        g = grads[name] * min(1.0, 1.0 / norm)
        m, v = (1 - 0.9) * g / (1 - 0.9), (1 - 0.95) * g * g / (1 - 0.95)
        upd = m / (np.sqrt(v) + 1e-8) + (0.1 * params[name] if name == "w" else 0.0)
        np.testing.assert_allclose(updates[name], -lr * upd, rtol=1e-5, atol=1e-7, err_msg=name)


def test_batch_not_divisible_by_devices_is_a_clear_error():
    from intern_jax.config import ConfigError

    tc = dataclasses.replace(_train_cfg(fsdp=8), batch_size=4)
    with pytest.raises(ConfigError, match="divisible"):
        make_train_step(CFG, tc, make_mesh({"fsdp": 8}))


@pytest.mark.parametrize("variant", ["remat_full", "bf16_compute_fp32_master"])
def test_remat_and_mixed_precision_keep_the_fp32_trajectory(reference, variant):
    """remat changes memory, not numbers; bf16 compute over fp32 master weights stays close and
    keeps params and optimizer state in float32. (z-loss rides along on the bf16 variant.)"""
    seed, batches, params, want = reference[:4]
    model = dataclasses.replace(CFG, param_dtype="float32")
    run = Execution(remat="full") if variant == "remat_full" else Execution(dtype="bfloat16")
    z = 0.0 if variant == "remat_full" else 1e-4
    tc = dataclasses.replace(_train_cfg(fsdp=1), model=model, execution=run)
    tc = dataclasses.replace(tc, optimizer=dataclasses.replace(tc.optimizer, z_loss=z))
    ts = make_train_step(model, tc, make_mesh({"fsdp": 1}, jax.devices()[:1]), compiler_options=FAST)
    state = ts.init_state(jax.device_put(params, ts.state_shardings["params"]))
    got = []
    for b in batches:
        state, m = ts.step(state, None, shard_batch(b, ts.batch_sharding))
        got.append(float(m["loss"]))
    if variant == "remat_full":
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"seed {seed}")
    else:
        np.testing.assert_allclose(got, want, atol=3e-2, rtol=0, err_msg=f"seed {seed}")
        assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype("float32")}
        assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state["opt_state"]))
        assert 0 < float(m["z_loss"]) < 1e-4 * 100


@pytest.mark.parametrize("tied", [False, True], ids=["untied_head", "tied_head"])
def test_chunked_loss_and_grads_equal_unchunked(tied, seed):
    """Head + cross-entropy + z-loss in chunks (T=29 not divisible by 8) match full logits, value and
    gradient, on packed segments with a partial loss mask; the reference is optax's cross-entropy."""
    from intern_jax.model import internlm2
    from intern_jax.train.loss import chunked_lm_loss_sums

    cfg = tiny_config(vocab_size=96, tie_word_embeddings=tied)
    params = random_params(cfg, seed=seed % 1000, scale=0.3)
    rng = np.random.default_rng(seed)
    b, t, z_coef = 3, 29, 1e-2
    # rows of 1-3 packed documents of random lengths, then padding (segment 0)
    segment_ids = np.zeros((b, t), np.int32)
    positions = np.zeros((b, t), np.int32)
    for r in range(b):
        bounds = np.sort(rng.choice(np.arange(1, t), size=3, replace=False))
        for s, (lo, hi) in enumerate(zip([0, *bounds[:-1]], bounds), start=1):
            segment_ids[r, lo:hi], positions[r, lo:hi] = s, np.arange(hi - lo)
    tokens = rng.integers(0, cfg.vocab_size, (b, t), dtype=np.int32)
    mask = (segment_ids != 0) & (rng.random((b, t)) < 0.7)
    batch = {"tokens": tokens, "targets": rng.integers(0, cfg.vocab_size, (b, t), dtype=np.int32),
             "positions": positions, "segment_ids": segment_ids, "loss_mask": mask.astype(np.float32)}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def reference(p):
        logits, _ = internlm2.forward(p, batch, cfg)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        lse = jax.nn.logsumexp(logits, axis=-1)
        return jnp.sum((ce + z_coef * lse**2) * batch["loss_mask"])

    def chunked(p, chunk):
        hidden, _ = internlm2.hidden_states(p, batch, cfg)
        ce, z, count = chunked_lm_loss_sums(hidden, lambda x: internlm2.head_logits(p, x, cfg), batch, z_coef, chunk)
        return ce + z, count

    want, want_g = jax.jit(jax.value_and_grad(reference))(params)
    for chunk in (8, 0):
        (got, count), got_g = jax.jit(jax.value_and_grad(chunked, has_aux=True), static_argnums=1)(params, chunk)
        assert float(count) == float(batch["loss_mask"].sum())
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"seed {seed} chunk {chunk}")
        head = "tok_embeddings" if tied else "output"
        assert float(jnp.abs(got_g[head]).max()) > 0
        for path, g in jax.tree_util.tree_leaves_with_path(got_g):
            w = want_g
            for k in path:
                w = w[k.key]
            scale = float(jnp.abs(w).max()) + 1e-12
            np.testing.assert_allclose(g / scale, w / scale, atol=2e-5, err_msg=f"seed {seed} chunk {chunk} {path}")


def test_train_step_with_loss_chunks_follows_the_unchunked_trajectory(reference):
    """The config options end to end: chunks of 7 positions (T=32) x 48 vocabulary columns (V=128) give
    the same losses, params and gradient norms."""
    tc = dataclasses.replace(_train_cfg(fsdp=1), loss_chunk_tokens=7, loss_chunk_vocab=48)
    _assert_same_trajectory(_run({}, 1, reference[1], reference[2], train_cfg=tc), reference, reference[0])
