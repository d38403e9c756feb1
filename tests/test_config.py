"""Config files and --set overrides: typed coercion, unknown keys named with the valid ones."""

import pytest

from intern_jax.config import ConfigError, Execution, ModelConfig, RopeScaling, apply_overrides, load_config


def test_override_coerces_types_and_nested_fields():
    cfg = load_config("configs/model/tiny.py", ["num_layers=5", "rope_scaling.type=linear",
                                                "rope_scaling.factor=4", "tie_word_embeddings=true"])
    assert cfg.num_layers == 5 and isinstance(cfg.num_layers, int)
    assert cfg.rope_scaling == RopeScaling("linear", 4.0)
    assert cfg.tie_word_embeddings is True


def test_unknown_key_lists_valid_fields():
    cfg = load_config("configs/model/tiny.py")
    with pytest.raises(ConfigError, match=r"unknown config key 'num_layer'.*valid fields: .*num_layers"):
        apply_overrides(cfg, ["num_layer=3"])
    with pytest.raises(ConfigError, match=r"rope_scaling.kind.*valid fields: factor, type"):
        apply_overrides(cfg, ["rope_scaling.kind=x"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_layers=three", "expects an integer"),
        ("tie_word_embeddings=maybe", "expects a boolean"),
        ("rope_scaling.type=yarn", "not supported"),
        ("rope_scaling=2", "group of settings"),
        ("num_layers", "must look like key.path=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/model/tiny.py", [override])


def test_invalid_architecture_is_rejected():
    with pytest.raises(ConfigError, match="multiple of num_kv_heads"):
        ModelConfig(vocab_size=10, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=3, intermediate_size=8)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no top-level 'config'"):
        load_config(tmp_path / "empty.py")


def test_overrides_apply_in_any_order():
    """A value valid only together with a later override (batch_size 64 with micro_batches 64, from
    a config with 128 micro-batches) is applied once the other one is; a value that stays invalid
    is still refused, naming it."""
    from intern_jax.train.config import load_train_config  # noqa: PLC0415

    path = "configs/pretrain/internlm2_7b.py"
    cfg = load_train_config(path, ["batch_size=64", "parallel.micro_batches=64"])
    assert (cfg.batch_size, cfg.parallel.micro_batches) == (64, 64)
    with pytest.raises(ConfigError, match="cannot set batch_size='63'"):
        load_train_config(path, ["batch_size=63", "parallel.micro_batches=64"])


def test_execution_policy_is_checked_and_old_model_keys_name_where_they_moved():
    """How the model runs is the run's (``execution``), not the model config's: a bad value is named,
    and the keys that once sat in the model config say where they live now."""
    from intern_jax.train.config import load_train_config  # noqa: PLC0415

    with pytest.raises(ConfigError, match="remat='sometimes'"):
        apply_overrides(Execution(), ["remat=sometimes"])
    with pytest.raises(ConfigError, match="attention_impl='cuda'"):
        Execution(attention_impl="cuda")
    with pytest.raises(ConfigError, match="'remat' has moved: set execution.remat"):
        load_config("configs/model/tiny.py", ["remat=full"])
    path = "configs/pretrain/tiny.py"
    with pytest.raises(ConfigError, match="'model.attention_chunk' has moved: set execution.attention_chunk"):
        load_train_config(path, ["model.attention_chunk=64"])
    cfg = load_train_config(path, ["execution.remat=dots", "execution.dtype=bfloat16"])
    assert cfg.execution == Execution(dtype="bfloat16", remat="dots")
    assert cfg.execution.compute_dtype(cfg.model) == "bfloat16"
    assert Execution().compute_dtype(ModelConfig(1, 8, 1, 1, 1, 8, param_dtype="float16")) == "float16"
