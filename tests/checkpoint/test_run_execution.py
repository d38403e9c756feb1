"""A run directory's execution policy: recorded beside the model config, read back by ``load_model``, and
mapped out of the model config of run.json files written before the policy had a place of its own."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from intern_jax.checkpoint import load_model
from intern_jax.checkpoint.run import CheckpointConfig, Checkpointer, write_run_json
from intern_jax.config import Execution
from intern_jax.inference import Decoder
from intern_jax.model import internlm2


def _run_dir(path, cfg, params, execution):
    write_run_json(path, cfg, None, execution=execution)
    ckpt = Checkpointer(path, CheckpointConfig(async_save=False))
    try:
        ckpt.save(1, {"params": params, "step": jnp.ones((), jnp.int32)})
        ckpt.wait()
    finally:
        ckpt.close()
    return path


def test_old_run_json_with_the_policy_inside_the_model_config_loads_with_it_mapped(tmp_path, tiny, make_params):
    cfg = tiny()
    params = make_params(cfg, seed=3)
    run = _run_dir(tmp_path / "run", cfg, params, Execution(dtype="bfloat16", remat="full"))
    record = json.loads((run / "run.json").read_text())
    assert record["execution"] == {"dtype": "bfloat16", "remat": "full", "attention_impl": "xla",
                                   "attention_chunk": 0}
    new = load_model(run)

    # the same run as an older version wrote it: no "execution", the policy among the model's fields
    legacy = {k: v for k, v in record.items() if k != "execution"}
    legacy["model_config"] = {**record["model_config"], "dtype": "bfloat16", "remat": "full",
                              "attention_impl": "xla", "attention_chunk": 0}
    (run / "run.json").write_text(json.dumps(legacy))
    old = load_model(run)
    assert old.config == new.config == cfg
    assert old.execution == new.execution == Execution(dtype="bfloat16", remat="full")

    # a decoder of the loaded run computes in bfloat16 (weights and cache), as the model run with that policy does
    decoder = Decoder.from_model(old)
    assert {x.dtype for x in jax.tree.leaves(decoder.params)} == {jnp.dtype("bfloat16")}
    assert decoder.new_batch(1, 16).cache.k.dtype == jnp.bfloat16
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 7)).astype(np.int32)
    want, _ = internlm2.forward(params, {"tokens": jnp.asarray(tokens)}, cfg, execution=Execution(dtype="bfloat16"))
    (got, _), = decoder.score([tokens[0].tolist()], [1])
    chosen = np.take_along_axis(np.asarray(jax.nn.log_softmax(want[0, :-1])), tokens[0, 1:, None], 1)[:, 0]
    np.testing.assert_allclose(got, chosen, atol=2e-2, rtol=0)  # bfloat16 rounding, other shapes

    # a dtype given to load_model casts the params, and the model then computes in it
    cast = load_model(run, dtype="float16")
    assert cast.config == dataclasses.replace(cfg, param_dtype="float16") and cast.execution.dtype == ""
    assert load_model(run, execution=Execution()).execution == Execution()
