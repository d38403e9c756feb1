"""The train step: one jitted function (loss -> grads -> optax update) with explicit shardings.

Contract (shared by pretraining and fine-tuning)::

    ts = make_train_step(model_cfg, train_cfg, mesh, assemble=None,
                         trainable_shardings=None, frozen_shardings=None)
    state = ts.init_state(trainable)               # optimizer state etc., placed on the mesh
    state, metrics = ts.step(state, frozen, batch)  # state donated; frozen never donated

- ``trainable`` is what the optimizer updates and what checkpoints hold; ``frozen`` (or
  None) is passed in unchanged every step, is not in the optimizer state and is not saved.
  ``assemble(trainable, frozen) -> model params`` builds the model's params tree (default:
  the trainable tree itself); an ``assemble`` with a third parameter named ``rng`` also gets a
  fresh key each step and micro-batch (e.g. for LoRA dropout), derived from ``state["rng"]``.
  Shardings default to the model's (per ``parallel.zero``) for ``trainable`` and to
  replicated for ``frozen``; pass both when the trees are your own.
- ``batch`` follows the batch contract (tokens, targets, positions, segment_ids int32,
  loss_mask float32, all ``[global_batch, seq_len]``), sharded with ``ts.batch_sharding``
  (``shard_batch`` builds it from each process's rows).
- ``state`` = {step, updates, params, opt_state, rng, bad_steps, skipped}: ``step`` counts
  calls, ``updates`` applied updates (it drives the schedule); a step whose loss or
  gradient norm is not finite leaves params and optimizer state unchanged, bumps
  ``bad_steps`` (consecutive) and ``skipped`` (total). No host sync happens inside.
- ``metrics`` = {loss, grad_norm, lr, tokens, finite, bad_steps, skipped} (+ z_loss).
- ``ts.evaluate(state["params"], frozen, batch)`` -> {loss_sum, tokens}: the summed
  cross-entropy and target count of a batch (same sharding and micro-batches as the step,
  no dropout, no z-loss); held-out loss = sum of ``loss_sum`` / sum of ``tokens``.

Loss: ``sum(CE * loss_mask) / max(sum(loss_mask), 1)`` over the whole global batch (the
output head and the cross-entropy run in chunks of ``loss_chunk_tokens`` positions times
``loss_chunk_vocab`` vocabulary columns, see ``loss.chunked_lm_loss_sums``, so ``[tokens,
vocab]`` logits never exist at once); with
``parallel.micro_batches = k`` the batch is split into k micro-batches run under
``lax.scan`` whose summed gradients are divided by the total mask once, so k micro-batches
give the gradient of one big batch.

Sequence (context) parallelism: the ``seq`` logical axis maps to the ``sequence`` mesh axis,
so each device of that axis holds a contiguous slice of every row's positions, and the
activations of every layer keep that split. Only attention needs other positions: its keys
and values (and their segment ids and positions) are gathered over ``sequence`` in each
layer, as in Llama 3's all-gather context parallelism; with grouped-query attention they are
a small part of the layer's activations. The loss chunks are strided (``chunked_lm_loss_sums``)
so every chunk stays spread over the sequence devices.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from intern_jax import sharding as shd
from intern_jax.config import ConfigError, ModelConfig
from intern_jax.data.contract import CONTRACT_KEYS
from intern_jax.model import internlm2
from intern_jax.train.config import TrainConfig
from intern_jax.train.loss import OutputHead, chunked_lm_loss_sums
from intern_jax.train.optimizer import learning_rate_schedule, make_optimizer


def _identity_assemble(trainable, frozen):
    return trainable


def _devices_along(mesh, entry) -> int:
    """How many devices split an array dimension with this PartitionSpec entry."""
    names = () if entry is None else (entry,) if isinstance(entry, str) else entry
    return int(np.prod([mesh.shape[a] for a in names]))


def _replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


def _map_param_like(tree, param_treedef, param_shardings, other):
    """Shardings for an optimizer state: subtrees shaped like the params take theirs."""
    return jax.tree.map(
        lambda sub: param_shardings if jax.tree.structure(sub) == param_treedef else other,
        tree,
        is_leaf=lambda sub: jax.tree.structure(sub) == param_treedef,
    )


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A compiled-on-first-use train step and everything needed to feed, place and restore it."""

    step: Callable  # jitted (state, frozen, batch) -> (state, metrics); state donated
    init_state: Callable  # jitted trainable -> state
    evaluate: Callable  # jitted (state["params"], frozen, batch) -> {loss_sum, tokens}: no update, no dropout
    state_shardings: Any
    frozen_shardings: Any
    batch_sharding: NamedSharding
    optimizer: optax.GradientTransformation
    schedule: Callable
    mesh: Any
    abstract_trainable: Any

    def abstract_state(self):
        """The state as sharded ShapeDtypeStructs (for restoring and ahead-of-time compiles)."""
        shapes = jax.eval_shape(self.init_state, self.abstract_trainable)
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, self.state_shardings
        )

    def abstract_batch(self, batch_size: int, seq_len: int):
        def leaf(name):
            dtype = jnp.float32 if name == "loss_mask" else jnp.int32
            return jax.ShapeDtypeStruct((batch_size, seq_len), dtype, sharding=self.batch_sharding)

        return {name: leaf(name) for name in CONTRACT_KEYS}


# ---------------------------------------------------------------------------
# The pieces of a step, in the order a step runs them


def make_loss_sums(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh, assemble: Callable):
    """``loss_sums(trainable, frozen, batch, key, z_loss) -> (summed CE, summed z-loss, target count)``:
    the model's params assembled, its hidden states under ``mesh``'s activation layout, and the output
    head fused with the cross-entropy in chunks. ``key`` None: no dropout."""
    takes_rng = "rng" in inspect.signature(assemble).parameters

    def loss_sums(trainable, frozen, batch, key, z_loss):
        params = assemble(trainable, frozen, rng=key) if takes_rng else assemble(trainable, frozen)
        # the model's activation layout: the mesh and the run's logical-axis rules
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), shd.use_rules(train_cfg.parallel.rules):
            hidden, _ = internlm2.hidden_states(params, batch, model_cfg, execution=train_cfg.execution)
            head = OutputHead(*internlm2.head_weight(params, model_cfg))
            return chunked_lm_loss_sums(hidden, head, batch, z_loss, train_cfg.loss_chunk_tokens,
                                        train_cfg.loss_chunk_vocab)

    return loss_sums


def split_micro_batches(batch, k: int, sharding: NamedSharding):
    """``[batch, ...]`` -> ``[k, batch / k, ...]``: rows j*k + i form micro-batch i, so every device
    keeps its own rows (``sharding``: ``[k, batch, seq]`` split as the batch is)."""
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)
    return jax.lax.with_sharding_constraint(micro, jax.tree.map(lambda _: sharding, micro))


def sum_over_micro_batches(fn: Callable, batch, key, k: int, micro_sharding, zeros):
    """``fn(batch, key)`` (a pytree of sums) summed over ``k`` micro-batches under ``lax.scan``, starting from
    ``zeros``; micro-batch ``i`` gets ``fold_in(key, i)`` (a None key stays None). One call when k == 1."""
    if k == 1:
        return fn(batch, key)

    def add(total, xs):
        mb, i = xs
        out = fn(mb, None if key is None else jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, total, out), None

    total, _ = jax.lax.scan(add, zeros, (split_micro_batches(batch, k, micro_sharding), jnp.arange(k)))
    return total


def accumulate_gradients(grads_of: Callable, params, batch, key, k: int, micro_sharding, grad_shardings):
    """Summed float32 gradients and ``(ce, z, count)`` sums of ``grads_of(params, batch, key)`` over ``k``
    micro-batches (the gradient sums laid out as ``grad_shardings``)."""
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    zeros = (jax.lax.with_sharding_constraint(zeros, grad_shardings), (jnp.zeros((), jnp.float32),) * 3)
    return sum_over_micro_batches(lambda b, key: grads_of(params, b, key), batch, key, k, micro_sharding, zeros)


def update_if_finite(optimizer: optax.GradientTransformation, grads, opt_state, params, finite):
    """``(params, opt_state)`` after one optimizer update, or unchanged when ``finite`` is False.

    A conditional, not a select of new and old values: the skipped branch forwards its operands, so
    params and optimizer state are updated in place, without copies of the old values."""
    def apply(operands):
        grads, opt_state, params = operands
        updates, new_opt = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt

    return jax.lax.cond(finite, apply, lambda ops: (ops[2], ops[1]), (grads, opt_state, params))


def _init_state(trainable, optimizer, seed: int) -> dict:
    return {
        "step": jnp.zeros((), jnp.int32),
        "updates": jnp.zeros((), jnp.int32),
        "params": trainable,
        "opt_state": optimizer.init(trainable),
        "rng": jax.random.key_data(jax.random.key(seed)),
        "bad_steps": jnp.zeros((), jnp.int32),
        "skipped": jnp.zeros((), jnp.int32),
    }


# ---------------------------------------------------------------------------
# The step


def make_train_step(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    mesh,
    *,
    assemble: Callable | None = None,
    abstract_trainable=None,
    trainable_shardings=None,
    frozen_shardings=None,
    opt_state_shardings=None,
    total_steps: int | None = None,
    compiler_options: dict | None = None,
) -> TrainStep:
    """Build the jitted step for ``mesh`` (see the module docstring for the contract).

    ``abstract_trainable`` (ShapeDtypeStructs) defaults to the model's params; give it with
    ``trainable_shardings`` when the trainable tree is your own (e.g. adapters).
    """
    # where everything lives
    param_rules, opt_rules = train_cfg.parallel.state_rules()
    custom = abstract_trainable is not None
    if custom and trainable_shardings is None:
        raise ValueError("a custom trainable tree needs its trainable_shardings")
    if not custom:
        abstract_trainable = internlm2.abstract(model_cfg)
        if trainable_shardings is None:
            trainable_shardings = internlm2.param_shardings(model_cfg, mesh, param_rules)
    if opt_state_shardings is None:  # gradients are reduced onto the optimizer state's layout
        opt_state_shardings = trainable_shardings if custom else internlm2.param_shardings(model_cfg, mesh, opt_rules)
    replicated = _replicated(mesh)
    frozen_shardings = replicated if frozen_shardings is None else frozen_shardings
    batch_sharding = make_batch_sharding(mesh, train_cfg.parallel.rules)
    check_batch_fits(train_cfg, mesh, batch_sharding.spec)
    k = train_cfg.parallel.micro_batches
    micro_sharding = NamedSharding(mesh, PartitionSpec(None, *batch_sharding.spec))

    optimizer = make_optimizer(train_cfg.optimizer, total_steps or train_cfg.steps)
    schedule = learning_rate_schedule(train_cfg.optimizer, total_steps or train_cfg.steps)
    opt_abstract = jax.eval_shape(optimizer.init, abstract_trainable)
    state_shardings = {
        "step": replicated, "updates": replicated, "rng": replicated, "bad_steps": replicated, "skipped": replicated,
        "params": trainable_shardings,
        "opt_state": _map_param_like(opt_abstract, jax.tree.structure(abstract_trainable), opt_state_shardings,
                                     replicated),
    }
    z_coef = train_cfg.optimizer.z_loss
    loss_sums = make_loss_sums(model_cfg, train_cfg, mesh, assemble or _identity_assemble)

    def grads_of(trainable, frozen, batch, key):
        def loss_of(tr):
            ce, z, count = loss_sums(tr, frozen, batch, key, z_coef)
            return ce + z, (ce, z, count)

        (_, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        return jax.lax.with_sharding_constraint(grads, opt_state_shardings), aux

    def step(state, frozen, batch):
        batch = {name: batch[name] for name in CONTRACT_KEYS}
        params = state["params"]
        next_rng, step_key = jax.random.split(jax.random.wrap_key_data(state["rng"]))
        # loss and gradients, summed over micro-batches, then divided by the whole batch's target count
        grads, (ce, z, count) = accumulate_gradients(lambda p, b, key: grads_of(p, frozen, b, key), params, batch,
                                                     step_key, k, micro_sharding, opt_state_shardings)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = ce / denom
        grad_norm = optax.tree.norm(grads)
        # a non-finite loss or gradient skips the update
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(z)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        new_params, new_opt = update_if_finite(optimizer, grads, state["opt_state"], params, finite)
        bad = jnp.where(finite, 0, state["bad_steps"] + 1)
        new_state = {
            "step": state["step"] + 1,
            "updates": state["updates"] + finite.astype(jnp.int32),
            "params": new_params,
            "opt_state": new_opt,
            "rng": jax.random.key_data(next_rng),
            "bad_steps": bad,
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
        }
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["updates"]), "tokens": count,
                   "finite": finite, "bad_steps": bad, "skipped": new_state["skipped"]}
        if z_coef:
            metrics["z_loss"] = z / denom
        return new_state, metrics

    def evaluate(trainable, frozen, batch):
        batch = {name: batch[name] for name in CONTRACT_KEYS}
        sums = lambda b, _: loss_sums(trainable, frozen, b, None, 0.0)  # noqa: E731  (no dropout, no z-loss)
        ce, _, count = sum_over_micro_batches(sums, batch, None, k, micro_sharding, (jnp.zeros((), jnp.float32),) * 3)
        return {"loss_sum": ce, "tokens": count}

    batch_shardings = {name: batch_sharding for name in CONTRACT_KEYS}
    jit_kw = {"compiler_options": compiler_options} if compiler_options else {}
    return TrainStep(
        step=jax.jit(step, in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,), **jit_kw),
        init_state=jax.jit(lambda trainable: _init_state(trainable, optimizer, train_cfg.seed),
                           in_shardings=(trainable_shardings,), out_shardings=state_shardings, **jit_kw),
        evaluate=jax.jit(evaluate, in_shardings=(trainable_shardings, frozen_shardings, batch_shardings),
                         out_shardings=replicated, **jit_kw),
        state_shardings=state_shardings,
        frozen_shardings=frozen_shardings,
        batch_sharding=batch_sharding,
        optimizer=optimizer,
        schedule=schedule,
        mesh=mesh,
        abstract_trainable=abstract_trainable,
    )


# ---------------------------------------------------------------------------
# Feeding the step: where a batch's rows and positions live, and which rows each process loads


def make_batch_sharding(mesh, rules=None) -> NamedSharding:
    """``[batch, seq]`` arrays: rows over ``data`` x ``fsdp``, positions over ``sequence`` (by default;
    ``rules``: the run's, ``ParallelConfig.rules``)."""
    return NamedSharding(mesh, shd.logical_to_spec(("batch", "seq"), rules))


def check_batch_fits(train_cfg: TrainConfig, mesh, batch_spec) -> None:
    """A ConfigError unless the batch splits evenly into micro-batches over the data x fsdp devices and
    its positions over the sequence devices (``batch_spec``: the batch sharding's ``PartitionSpec``)."""
    k = train_cfg.parallel.micro_batches
    batch_ways, seq_ways = (_devices_along(mesh, entry) for entry in batch_spec)
    if train_cfg.batch_size % (k * batch_ways):
        raise ConfigError(
            f"batch_size {train_cfg.batch_size} must be divisible by micro_batches ({k}) x the "
            f"data x fsdp devices ({batch_ways}); change batch_size or the mesh"
        )
    if train_cfg.seq_len % seq_ways:
        raise ConfigError(
            f"seq_len {train_cfg.seq_len} must be divisible by the sequence devices ({seq_ways}); "
            "change seq_len or parallel.sequence"
        )


def process_row_block(sharding: NamedSharding, batch_size: int, seq_len: int) -> tuple[int, int]:
    """``(index, count)``: this process's block of the global batch's rows, of ``count`` equal blocks.

    Processes whose devices hold the same rows (the mesh axes that do not split the batch, such as
    ``sequence`` or ``tensor``, may span processes) get the same index and must load the same rows;
    ``shard_batch`` then cuts each device's positions out of them. The data pipeline takes this
    index and count in place of the process index and count.
    """
    rows_by_process: dict[int, set] = {}
    for device, index in sharding.devices_indices_map((batch_size, seq_len)).items():
        rows_by_process.setdefault(device.process_index, set()).add(index[0].indices(batch_size)[:2])
    spans = {}
    for process, rows in rows_by_process.items():
        rows = sorted(rows)
        if any(a[1] != b[0] for a, b in zip(rows, rows[1:])):
            raise ValueError(f"process {process} holds rows {rows} of the batch, not one contiguous block; "
                             "put the data and fsdp mesh axes outermost")
        spans[process] = (rows[0][0], rows[-1][1])
    blocks = sorted(set(spans.values()))
    if any(a[1] != b[0] for a, b in zip(blocks, blocks[1:])) or len({b - a for a, b in blocks}) != 1:
        raise ValueError(f"the processes' row blocks {blocks} do not split the batch of {batch_size} evenly")
    return blocks.index(spans[jax.process_index()]), len(blocks)


def shard_batch(batch: dict, sharding: NamedSharding, global_shape: tuple[int, int] | None = None) -> dict:
    """Global arrays from this process's rows of a batch-contract dict (numpy or jax).

    ``global_shape`` ``(batch_size, seq_len)``: the process holds whole rows (its block of
    ``process_row_block``) and each device takes its positions from them. Without it, each
    process holds exactly the rows and positions its devices hold.
    """
    missing = [k for k in CONTRACT_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; a training batch needs {', '.join(CONTRACT_KEYS)}")
    out = {}
    for name in CONTRACT_KEYS:
        want = np.float32 if name == "loss_mask" else np.int32
        out[name] = jax.make_array_from_process_local_data(sharding, np.asarray(batch[name], want), global_shape)
    return out
