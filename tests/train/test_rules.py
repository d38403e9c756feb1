"""Logical-axis rules as a value of the run's config: they reach the model's activation layout and the
train state's shardings, the ZeRO modes derive from them, and a typo in them is a ConfigError."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from intern_jax import sharding as shd
from intern_jax.config import ConfigError
from intern_jax.sharding import make_mesh
from intern_jax.testing import tiny_config
from intern_jax.train.config import ParallelConfig, TrainConfig
from intern_jax.train.step import make_train_step

CFG = tiny_config(vocab_size=128)
WEIGHT_AXES = ("vocab", "embed", "heads", "kv_heads", "qkv", "head_dim", "mlp", "layers")


def test_default_rules_are_the_sharding_modules_and_the_old_zero_table():
    parallel = ParallelConfig()
    assert parallel.rules == dict(shd.DEFAULT_RULES)
    # the table the train step used to hard-code: ZeRO shards weights' ``embed`` over fsdp x sequence
    old = {"full": ({}, {}), "hybrid": ({"embed": None}, {}), "none": ({"embed": None}, {"embed": None})}
    for zero, changes in old.items():
        got = ParallelConfig(zero=zero).state_rules()
        for rules, change in zip(got, changes):
            want = {**shd.DEFAULT_RULES, **change}
            assert {a: rules[a] for a in WEIGHT_AXES} == {a: want[a] for a in WEIGHT_AXES}, zero


def test_the_configs_rules_decide_the_train_states_shardings():
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    default = TrainConfig(model=CFG, batch_size=8, seq_len=32, parallel=ParallelConfig(fsdp=4, tensor=2))
    ruled = TrainConfig(model=CFG, batch_size=8, seq_len=32,
                        parallel=ParallelConfig(fsdp=4, tensor=2, rules={**shd.DEFAULT_RULES, "mlp": None}))
    w1 = [make_train_step(CFG, tc, mesh).state_shardings["params"]["layers"]["w1"].spec for tc in (default, ruled)]
    assert w1[0][2] == "tensor" and w1[1][2] is None
    assert w1[0][1] == w1[1][1]  # embed: unchanged


def test_bound_rules_are_what_model_code_reads_under_a_mesh():
    x = np.ones((8, 64))
    with jax.sharding.use_abstract_mesh(make_mesh({"data": 2, "sequence": 4}).abstract_mesh):
        assert shd.is_split("seq")
        with shd.use_rules({**shd.DEFAULT_RULES, "seq": None}):
            assert not shd.is_split("seq") and shd.logical_to_spec(("batch", "seq")) == P(("data", "fsdp"), None)
        assert shd.is_split("seq") and shd.logical_to_spec(("batch", "seq")) == P(("data", "fsdp"), "sequence")
    assert shd.constrain(x, ("batch", "seq")) is x


@pytest.mark.parametrize("rules,named", [({"embedding": "fsdp"}, "'embedding'"), ({"embed": "fsdq"}, "'fsdq'"),
                                         ({"mlp": 3}, "3")])
def test_rules_naming_an_unknown_axis_are_a_config_error(rules, named):
    with pytest.raises(ConfigError, match=f"parallel.rules: .*{named}"):
        ParallelConfig(rules=rules)
