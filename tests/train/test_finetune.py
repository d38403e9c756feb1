"""Fine-tuning end to end on a tiny InternLM2 base: LoRA, QLoRA and full runs on the shared loop, resume, loading."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intern_jax.checkpoint import load_model, save_native
from intern_jax.checkpoint.run import load_adapters
from intern_jax.config import Execution
from intern_jax.data.sft import SFTDataConfig, load_examples, make_sft_eval_batches
from intern_jax.model import internlm2
from intern_jax.model import lora as L
from intern_jax.testing import assert_close, random_params, reference_lm_loss_sums, tiny_config
from intern_jax.train import finetune as F
from intern_jax.train.config import CheckpointConfig, EvalConfig, LoggingConfig, OptimizerConfig
from intern_jax.train.metrics import read_metrics


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random InternLM2 with a small InternLM2-style SentencePiece tokenizer (InternLM2 chat template)."""
    from intern_jax.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("base")
    rng = np.random.default_rng(5)
    lines = [f"user {int(a)}+{int(b)}? assistant {int(a + b)} the answer is" for a, b in rng.integers(0, 99, (400, 2))]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    tok = train_sentencepiece([root / "corpus.txt"], root / "sp", vocab_size=320)
    cfg = tiny_config(vocab_size=tok.vocab_size, max_position_embeddings=256)
    save_native(root / "tiny", cfg, random_params(cfg, seed=11), tok)
    return root / "tiny"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    rows = []
    for _ in range(24):
        a, b = (int(x) for x in rng.integers(0, 50, 2))
        rows.append(json.dumps({"messages": [{"role": "user", "content": f"{a}+{b}?"},
                                             {"role": "assistant", "content": str(a + b)}]}))
    rows.append("{broken")
    path.write_text("\n".join(rows) + "\n")
    return path


FAST = {"xla_backend_optimization_level": 0}


def _cfg(base_dir, data_file, mode, steps, **train):
    return F.FinetuneConfig(
        base_model=str(base_dir), mode=mode, lora=L.LoraConfig(rank=4, alpha=8.0, dropout=0.1),
        train=F.finetune_training(
            SFTDataConfig(path=str(data_file)), steps=steps, batch_size=8, seq_len=64,
            optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=0, weight_decay=0.0),
            checkpoint=CheckpointConfig(save_every=0, async_save=False),
            logging=LoggingConfig(log_every=1, tensorboard=False, progress=False), **train,
        ),
    )


def _with_train(cfg, **train):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def test_lora_run_checkpoints_only_adapters_records_base_and_merges_on_load(base_dir, data_file, tmp_path):
    run = tmp_path / "lora"
    losses = []
    result = F.finetune(_cfg(base_dir, data_file, "lora", 6), run, on_step=lambda s, m: losses.append(m["loss"]),
                        compiler_options=FAST)
    assert result.step == 6 and all(np.isfinite(losses))
    record = json.loads((run / "run.json").read_text())
    assert record["trainable"] == "lora" and record["base_model"] == str(base_dir)
    assert record["lora"]["rank"] == 4 and record["data_stats"]["skipped"] == {"invalid JSON": 1}

    _, base, lora, adapters = load_adapters(run)
    assert jax.tree.structure(adapters) == jax.tree.structure(L.abstract_lora(base.params, lora))
    assert all(np.abs(np.asarray(b)).max() > 0 for b in jax.tree.leaves({k: v["b"] for k, v in
                                                                        adapters["layers"].items()}))
    merged = load_model(run)  # load_model reads adapter runs: base + adapters, merged
    assert jax.tree.structure(merged.params) == jax.tree.structure(base.params)
    batch = {"tokens": jnp.asarray(np.random.default_rng(1).integers(0, 300, (1, 12)), jnp.int32)}
    expect, _ = internlm2.forward(L.apply_lora(base.params, adapters, lora), batch, base.config)
    got, _ = internlm2.forward(merged.params, batch, merged.config)
    assert_close(got, expect, 1e-5, "merged adapter run")
    assert merged.tokenizer is not None

    # scripts/convert.py paths: merged into an HF layout, or the adapters alone for PEFT
    from intern_jax.checkpoint import convert_checkpoint

    convert_checkpoint(run, tmp_path / "hf", to="internlm2")
    exported = load_model(tmp_path / "hf")
    assert_close(internlm2.forward(exported.params, batch, exported.config)[0], expect, 1e-5, "exported merge")
    convert_checkpoint(run, tmp_path / "peft", to="peft")
    adapter_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == ["w1", "w2", "w3", "wo", "wqkv"]
    assert adapter_config["r"] == 4 and (tmp_path / "peft" / "adapter_model.safetensors").is_file()

    # rerunning with more steps resumes from the saved adapters
    resumed = F.finetune(_cfg(base_dir, data_file, "lora", 8), run, compiler_options=FAST)
    assert resumed.resumed_from == 6 and resumed.step == 8


def test_lora_held_out_evaluation_matches_the_merged_model_and_leaves_training_unchanged(
        base_dir, data_file, tmp_path):
    data = SFTDataConfig(path=str(data_file), holdout=0.25)  # 24 usable rows: 6 held out, 18 trained on
    plain = _with_train(_cfg(base_dir, data_file, "lora", 4), data=data)
    evaluated = _with_train(plain, eval=EvalConfig(every=2))
    runs = {}
    for name, cfg in (("plain", plain), ("eval", evaluated)):
        losses = []
        F.finetune(cfg, tmp_path / name, on_step=lambda s, m, out=losses: out.append(m["loss"]),
                   compiler_options=FAST)
        runs[name] = losses
    assert runs["eval"] == runs["plain"]  # evaluation draws no randomness and changes no state

    records = [r for r in read_metrics(tmp_path / "eval") if "eval_loss" in r]
    assert [r["step"] for r in records] == [2, 4]
    merged = load_model(tmp_path / "eval")  # base + final adapters (dropout off)
    tokenizer = merged.tokenizer
    train_cfg = evaluated.train_config(merged.config)
    (name, batches), = make_sft_eval_batches(train_cfg.data_config, tokenizer).items()
    assert name == "chat" and records[-1][f"eval_loss/{name}"] == records[-1]["eval_loss"]
    ce, count = reference_lm_loss_sums(merged.params, merged.config, batches)
    assert records[-1]["eval_tokens"] == count
    np.testing.assert_allclose(records[-1]["eval_loss"], ce / count, rtol=1e-5)

    # the held-out conversations are six of the file's, none of them trained on
    examples, _ = load_examples(train_cfg.data_config, tokenizer)
    held = [tuple(e["tokens"]) for e in examples[::4]]
    packed = [tuple(b["tokens"][r][b["segment_ids"][r] == s]) for b in batches for r in range(b["tokens"].shape[0])
              for s in range(1, b["segment_ids"][r].max() + 1)]
    assert sorted(packed) == sorted(held) and len(held) == 6


def test_qlora_run_trains_adapters_over_an_nf4_base(base_dir, data_file, tmp_path):
    losses = []
    cfg = _cfg(base_dir, data_file, "qlora", 4, execution=Execution(dtype="bfloat16", remat="full"))
    F.finetune(cfg, tmp_path / "qlora", on_step=lambda s, m: losses.append(m["loss"]), compiler_options=FAST)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    record = json.loads((tmp_path / "qlora" / "run.json").read_text())
    assert record["quant"]["kind"] == "nf4" and record["execution"]["remat"] == "full"


def test_full_run_updates_all_params_and_loads_as_a_model(base_dir, data_file, tmp_path):
    F.finetune(_cfg(base_dir, data_file, "full", 2), tmp_path / "full", compiler_options=FAST)
    base, tuned = load_model(base_dir), load_model(tmp_path / "full")
    differs = lambda a, b: bool(np.abs(np.asarray(a) - np.asarray(b)).max() > 0)
    assert all(jax.tree.leaves(jax.tree.map(differs, base.params, tuned.params)))


def test_bad_mode_and_missing_base_are_explained(base_dir, data_file, tmp_path):
    from intern_jax.config import ConfigError

    with pytest.raises(ConfigError, match="mode="):
        _cfg(base_dir, data_file, "adapters", 1)
    with pytest.raises(ConfigError, match="set data.holdout .* or eval.path"):
        _cfg(base_dir, data_file, "lora", 1, eval=EvalConfig(every=5))
    with pytest.raises(ValueError, match=r"data.holdout must be a fraction in \[0, 0.5\]"):
        SFTDataConfig(path=str(data_file), holdout=0.75)
    with pytest.raises(FileNotFoundError, match="base_model"):
        F.finetune(dataclasses.replace(_cfg(base_dir, data_file, "lora", 1), base_model=str(tmp_path / "nope")),
                   tmp_path / "run")


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "finetune").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_finetune_configs_load_and_accept_overrides(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs that generate data write it relative to the working directory
    cfg = F.load_finetune_config(path, ["train.steps=3", "train.optimizer.learning_rate=1e-4"])
    assert isinstance(cfg, F.FinetuneConfig) and cfg.train.steps == 3 and cfg.train.optimizer.learning_rate == 1e-4
    assert cfg.train_config(tiny_config()).data_config.seq_len == cfg.train.seq_len


@pytest.mark.slow
def test_smollm2_persona_lora_changes_the_answer_and_still_stops_at_im_end(tmp_path, monkeypatch, smollm2):
    monkeypatch.chdir(tmp_path)
    path = next(p for p in CONFIGS if p.stem == "smollm2_lora_sft")
    cfg = F.load_finetune_config(path, ["train.logging.progress=false"])
    from intern_jax.sharding import make_mesh

    F.finetune(cfg, tmp_path / "run", base=smollm2,  # the config's base_model, loaded once per session
               mesh=make_mesh({"fsdp": 1}, devices=jax.devices()[:1]))  # the demo's 1 device
    import runpy

    script = Path(__file__).resolve().parents[2] / "scripts" / "finetune.py"
    compare_answers = runpy.run_path(str(script))["compare_answers"]
    (row,) = compare_answers(tmp_path / "run", ["Who are you?"])
    assert "Quill" in row["tuned"] and "Quill" not in row["base"]
    assert row["tuned_stopped"]  # ended on <|im_end|>, not the token limit


def test_lora_dropout_masks_come_from_the_step_key():
    """The train step hands ``assemble`` a key derived from ``state["rng"]``: the same state gives the same
    dropout (exact resume), another rng other masks; without a key there is no dropout."""
    from intern_jax.sharding import make_mesh
    from intern_jax.train.config import ParallelConfig, TrainConfig
    from intern_jax.train.step import make_train_step, shard_batch
    from intern_jax.train.synthetic import SyntheticData, synthetic_batch

    cfg = tiny_config(vocab_size=64)
    params = random_params(cfg, seed=3)
    lora = L.LoraConfig(rank=4, alpha=8.0, dropout=0.5)
    adapters = L.init_lora(params, lora, jax.random.key(3))
    adapters = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(4), a.shape), adapters)
    assemble = F.make_assemble(lora)
    batch = {"tokens": jnp.asarray(np.random.default_rng(3).integers(0, 64, (2, 16)), jnp.int32)}
    plain = internlm2.forward(L.apply_lora(params, adapters, lora), batch, cfg)[0]
    np.testing.assert_array_equal(internlm2.forward(assemble(adapters, params), batch, cfg)[0], plain)

    mesh = make_mesh({"fsdp": 1}, jax.devices()[:1])
    tc = TrainConfig(model=cfg, steps=10, batch_size=2, seq_len=16, parallel=ParallelConfig(fsdp=1, zero="none"),
                     optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=0))
    replicated = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), adapters)
    ts = make_train_step(cfg, tc, mesh, assemble=assemble, trainable_shardings=replicated,
                         abstract_trainable=jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), adapters),
                         compiler_options=FAST)
    b = shard_batch(synthetic_batch(SyntheticData(seed=3), 64, 2, 16, 0), ts.batch_sharding)

    def loss_with_rng(seed):
        state = ts.init_state(adapters)
        state["rng"] = jax.random.key_data(jax.random.key(seed))
        return float(ts.step(state, params, b)[1]["loss"])

    first, again, other = loss_with_rng(1), loss_with_rng(1), loss_with_rng(2)
    assert first == again and abs(first - other) > 1e-4
