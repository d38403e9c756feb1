"""Sequence (context) parallelism: logical-axis helpers, the compiled step's communication, rows per process.

The losses, parameters and gradient norms of sequence-split steps against one device are in
test_step.py (``dp2xsp2xtp2``, ``fsdp2xsp4``) and, across two processes, in test_processes.py.
"""

import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from intern_jax import sharding as shd
from intern_jax.config import ConfigError, Execution
from intern_jax.model import internlm2
from intern_jax.sharding import make_mesh
from intern_jax.testing import tiny_config
from intern_jax.train.config import ParallelConfig, TrainConfig
from intern_jax.train.step import make_batch_sharding, make_train_step, process_row_block, shard_batch

# every size distinct, so a gathered array's shape says what it is
E, H, KV, D, M, V = 192, 6, 2, 32, 384, 640
CFG = tiny_config(vocab_size=V, hidden_size=E, num_heads=H, num_kv_heads=KV, intermediate_size=M, num_layers=2)
B, T = 8, 512
CHUNK_VOCAB = 256


def test_logical_specs_merge_dimensions_and_helpers_do_nothing_outside_a_mesh():
    assert shd.logical_to_spec((("batch", "seq"), None)) == P(("data", "fsdp", "sequence"), None)
    assert shd.logical_to_spec(("batch", "seq", "heads", None)) == P(("data", "fsdp"), "sequence", "tensor", None)
    x = np.ones((4, 8))
    assert not shd.is_split("seq") and shd.constrain(x, ("batch", "seq")) is x
    with jax.sharding.use_abstract_mesh(make_mesh({"data": 2, "sequence": 4}).abstract_mesh):
        assert shd.is_split("seq") and shd.is_split("batch") and not shd.is_split("heads")
    with jax.sharding.use_abstract_mesh(make_mesh({"fsdp": 8}).abstract_mesh):
        assert not shd.is_split("seq")


def _gathers(parallel: dict) -> list[tuple[str, tuple[int, ...]]]:
    tc = TrainConfig(model=CFG, steps=10, batch_size=B, seq_len=T, parallel=ParallelConfig(**parallel),
                     loss_chunk_tokens=128, loss_chunk_vocab=CHUNK_VOCAB)
    ts = make_train_step(CFG, tc, make_mesh(tc.parallel.mesh_shape()), compiler_options={
        "xla_backend_optimization_level": 0})
    hlo = ts.step.lower(ts.abstract_state(), None, ts.abstract_batch(B, T)).compile().as_text()
    out = []
    for m in re.finditer(r"= ([a-z0-9]+)\[([0-9,]*)\]\{[^}]*\} all-gather(?:-start)?\(", hlo):
        out.append((m.group(1), tuple(int(d) for d in m.group(2).split(",") if d)))
    return out


def test_sequence_split_step_gathers_only_keys_values_and_their_positions():
    """data=2 x sequence=4: the only activations any device gathers are each layer's keys and values
    over the whole sequence (and the segment ids and positions once); hidden states, queries, MLP
    activations and logits stay split by position."""
    gathers = _gathers({"data": 2, "fsdp": 1, "sequence": 4})
    # weights (ZeRO-3 over the sequence devices) are gathered too, whole or one layer at a time
    activations = [(dtype, s) for dtype, s in gathers if dtype != "f32" or s not in _weight_shapes()]
    kv = [s for dtype, s in activations if dtype == "f32" and s[:2] == (B // 2, T) and s[-1] == D]
    ids = [s for dtype, s in activations if dtype == "s32" and s == (B // 2, T)]
    assert kv and len(ids) == 2, gathers
    others = [g for g in activations if g[1] not in kv and g[1] not in ids]
    assert others == [], f"unexpected gathers {others}"


def test_without_a_sequence_axis_only_weights_are_gathered():
    gathers = _gathers({"data": 2, "fsdp": 4})
    assert gathers and [g for g in gathers if g[0] != "f32" or g[1] not in _weight_shapes()] == [], gathers


def _weight_shapes() -> set[tuple[int, ...]]:
    shapes = {(E, CHUNK_VOCAB), (CHUNK_VOCAB, E)}  # the head, a vocabulary chunk at a time
    for spec in jax.tree.leaves(internlm2.param_specs(CFG), is_leaf=lambda x: isinstance(x, internlm2.ParamSpec)):
        shapes |= {spec.shape, spec.shape[1:]}
        if len(spec.shape) > 2:  # projections are multiplied as [in, out] matrices
            shapes |= {(spec.shape[1], int(np.prod(spec.shape[2:]))), (int(np.prod(spec.shape[1:-1])), spec.shape[-1])}
    return shapes


def test_one_process_holds_all_rows_and_devices_cut_their_positions():
    mesh = make_mesh({"data": 2, "sequence": 4})
    sharding = make_batch_sharding(mesh)
    assert process_row_block(sharding, 8, 32) == (0, 1)
    rng = np.random.default_rng(0)
    batch = {k: rng.integers(1, 100, (8, 32)) for k in ("tokens", "targets", "positions", "segment_ids")}
    batch["loss_mask"] = rng.random((8, 32)).astype(np.float32)
    out = shard_batch(batch, sharding, (8, 32))
    for name, value in out.items():
        np.testing.assert_array_equal(np.asarray(value), batch[name])
        assert value.sharding.spec == P(("data", "fsdp"), "sequence")
        assert value.addressable_shards[0].data.shape == (4, 8)


def test_sequence_split_needs_a_divisible_length():
    with pytest.raises(ConfigError, match="seq_len 30 must be divisible by the sequence devices"):
        tc = TrainConfig(model=CFG, steps=1, batch_size=2, seq_len=30, parallel=ParallelConfig(fsdp=2, sequence=4))
        make_train_step(CFG, tc, make_mesh(tc.parallel.mesh_shape()))


@pytest.mark.parametrize("variant", ["query_blocks", "pallas"])
def test_sequence_split_attention_variants_give_the_one_device_losses_and_grad_norms(variant, seed):
    """On data=2 x sequence=4 (and tensor=2 for the kernel) both follow the one-device XLA trajectory:
    strided query blocks (attention_chunk), which span the split so each device runs its share of
    every block; and the Pallas flash kernel (interpreted here) per device under shard_map, on its
    queries against the rotated, gathered keys. Gradient norms too: a constant gradient scale would
    hide behind clipping and Adam in the losses."""
    from intern_jax.testing import random_params  # noqa: PLC0415
    from intern_jax.train.config import OptimizerConfig  # noqa: PLC0415
    from intern_jax.train.synthetic import SyntheticData, synthetic_batch  # noqa: PLC0415

    cfg = tiny_config(vocab_size=128)
    data = SyntheticData(seed=seed)
    batches = [synthetic_batch(data, cfg.vocab_size, 4, 64, i) for i in range(3)]
    params = random_params(cfg, seed=seed % 1000)

    def run(execution, parallel, devices):
        tc = TrainConfig(model=cfg, steps=10, batch_size=4, seq_len=64, parallel=ParallelConfig(**parallel),
                         optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1), execution=execution)
        ts = make_train_step(cfg, tc, make_mesh(tc.parallel.mesh_shape(), jax.devices()[:devices]),
                             compiler_options={"xla_backend_optimization_level": 0})
        state = ts.init_state(jax.device_put(params, ts.state_shardings["params"]))
        losses, grad_norms = [], []
        for b in batches:
            state, m = ts.step(state, None, shard_batch(b, ts.batch_sharding))
            losses.append(float(m["loss"]))
            grad_norms.append(float(m["grad_norm"]))
        return losses, grad_norms

    want = run(Execution(), {"fsdp": 1}, 1)
    if variant == "pallas":
        got = run(Execution(attention_impl="pallas"), {"data": 2, "fsdp": 1, "sequence": 2, "tensor": 2}, 8)
    else:
        got = run(Execution(attention_chunk=8), {"data": 2, "fsdp": 1, "sequence": 4}, 8)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=0, err_msg=f"seed {seed}: losses")
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, err_msg=f"seed {seed}: grad_norm")
