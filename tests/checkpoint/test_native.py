"""Native (orbax) checkpoints: restore onto any mesh, dtype casts, config validation."""

import json

import jax
import numpy as np
import pytest

from intern_jax.checkpoint import detect_format, load_model, save_native
from intern_jax.config import ConfigError, load_config
from intern_jax.model import internlm2
from intern_jax.sharding import make_mesh


def test_native_restores_identically_on_8_device_mesh_and_one_device(tiny, make_params, trees_equal, tmp_path):
    cfg = tiny(attention_bias=True)
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    params = jax.device_put(make_params(cfg), internlm2.param_shardings(cfg, mesh))  # saved from a sharded tree
    save_native(tmp_path / "ckpt", cfg, params)
    assert detect_format(tmp_path / "ckpt") == "native"

    sharded = load_model(tmp_path / "ckpt", mesh=mesh)
    single = load_model(tmp_path / "ckpt")
    assert sharded.config == single.config == cfg
    trees_equal(sharded.params, params)
    trees_equal(single.params, params)
    want = internlm2.param_shardings(cfg, mesh)
    for x, s in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(want), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)
    assert len(sharded.params["layers"]["wqkv"].sharding.device_set) == 8
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(single.params))


def test_native_load_casts_dtype_and_keeps_shardings(tiny, make_params, tmp_path):
    cfg = tiny()
    params = make_params(cfg)
    save_native(tmp_path, cfg, params)
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    loaded = load_model(tmp_path, dtype="bfloat16", mesh=mesh)
    assert loaded.config.param_dtype == "bfloat16"
    w = loaded.params["layers"]["w1"]
    assert w.dtype == np.dtype("bfloat16") and len(w.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(w), np.asarray(params["layers"]["w1"].astype("bfloat16")))


def test_native_unknown_config_field_is_named(tiny, make_params, tmp_path):
    cfg = tiny()
    save_native(tmp_path, cfg, make_params(cfg))
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "n_experts": 8}))
    with pytest.raises(ConfigError, match="n_experts"):
        load_model(tmp_path)


def test_native_params_not_matching_config_are_reported(tiny, make_params, tmp_path):
    cfg = tiny()
    save_native(tmp_path, cfg, make_params(cfg))
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "intermediate_size": 128}))
    with pytest.raises(ValueError, match="does not hold the params"):
        load_model(tmp_path)


def test_save_native_rejects_params_of_another_config(tiny, make_params, tmp_path):
    with pytest.raises(ValueError, match="do not match the config"):
        save_native(tmp_path, tiny(), make_params(tiny(num_layers=3)))


def test_save_native_refuses_to_overwrite(tiny, make_params, tmp_path):
    cfg = tiny()
    save_native(tmp_path, cfg, make_params(cfg))
    with pytest.raises(FileExistsError, match="already exists"):
        save_native(tmp_path, cfg, make_params(cfg))


def test_internlm2_7b_has_published_parameter_count():
    cfg = load_config("configs/model/internlm2_7b.py")
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(internlm2.abstract(cfg)))
    assert total == 7_737_708_544
    assert internlm2.count_params(cfg) == total
