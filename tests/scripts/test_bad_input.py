"""Bad input, tried as a new user would: every script answers with one clear line and exit status 2
(no traceback), or does the right thing, and nothing valid is lost.

Each case runs a script as a subprocess. The cases that load no model and train nothing are listed
in ``CASES`` and run two at a time from one session fixture; the few that need a model or a
training run (chat, Ctrl-C, the corpus checks) are tests of their own on tiny data.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/pretrain/tiny.py"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("INTERN_JAX_DEBUG", "XLA_FLAGS")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_backend_optimization_level=0", **extra)
    return env


def _run(script: str, *args, stdin: bytes | None = None, cwd=ROOT, env=None, timeout: int = 300):
    cmd = [sys.executable, str(ROOT / "scripts" / script), *map(str, args)]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, cwd=cwd, env=env or _env(), timeout=timeout)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def _byte_docs(n: int = 6) -> list[np.ndarray]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:n]
    return [np.concatenate([[1], np.frombuffer(f.read_bytes()[:8000], np.uint8).astype(np.int32) + 3, [2]])
            for f in files]


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Every bad (and some good) input the cases below point at."""
    from safetensors.numpy import save_file

    from intern_jax.checkpoint import embedded_model_path
    from intern_jax.data.pipeline import write_token_corpus

    d = tmp_path_factory.mktemp("bad_input")
    p = {"dir": d, "file": d / "a_file"}
    p["file"].write_text("not a directory\n")
    # models: a truncated GGUF, a directory of nothing, a Hugging Face directory with a truncated
    # safetensors file, a run without a finished checkpoint, a run with a damaged run.json
    p["gguf"] = d / "truncated.gguf"
    with open(embedded_model_path(), "rb") as fh:
        p["gguf"].write_bytes(fh.read(1 << 20))
    (p.setdefault("empty_dir", d / "empty_dir")).mkdir()
    (hf := d / "hf").mkdir()
    (hf / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 32}))
    save_file({"model.embed_tokens.weight": np.zeros((64, 16), np.float32)}, str(hf / "model.safetensors"))
    data = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[: len(data) // 2])
    p["hf"] = hf
    (run := d / "run_unfinished").mkdir()
    (run / "checkpoints").mkdir()
    model_config = {"vocab_size": 64, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                    "intermediate_size": 32}
    (run / "run.json").write_text(json.dumps({"format": "intern-jax-run", "trainable": "model",
                                              "model_config": model_config, "tokenizer": None}))
    p["run_unfinished"] = run
    (damaged := d / "run_damaged").mkdir()
    (damaged / "run.json").write_text('{"format": "intern-jax-run", "model_con')
    p["run_damaged"] = damaged
    # chat data: a valid JSONL whose first line is longer than 64 KiB, an empty file, a binary file,
    # one bad byte on line 3, a first line that is not JSON
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    good = json.dumps({"messages": chat})
    long_first = json.dumps({"messages": [{"role": "user", "content": "x" * 70000}, chat[1]]})
    (p.setdefault("long_jsonl", d / "long_first_line.jsonl")).write_text(f"{long_first}\n{good}\n")
    (p.setdefault("empty_jsonl", d / "empty.jsonl")).write_text("")
    (p.setdefault("binary", d / "binary.jsonl")).write_bytes(bytes(range(256)) * 8)
    bad_byte = good.replace("hi", "caf\udce9").encode("utf-8", "surrogateescape")
    lines = [good.encode(), good.encode(), bad_byte, good.encode()]
    (p.setdefault("bad_byte", d / "bad_byte.jsonl")).write_bytes(b"\n".join(lines) + b"\n")
    (p.setdefault("not_json", d / "notes.jsonl")).write_text("just some notes\n")
    (p.setdefault("syntax_error", d / "syntax_error.py")).write_text("config = (\n")
    (p.setdefault("surrogate", d / "surrogate.jsonl")).write_text('{"text": "caf\\udce9"}\n{"text": "fine"}\n')
    # processing inputs: JSONL without the text field, a binary .txt file, a good file beside a broken link
    (p.setdefault("binary_txt", d / "binary.txt")).write_bytes(bytes(range(256)) * 64)
    (mixed := d / "mixed").mkdir()
    (mixed / "good.jsonl").write_text(json.dumps({"text": "The quick brown fox jumps over the lazy dog. This sentence "
                                                          "is long enough to pass the quality filters, with many plain "
                                                          "words in it."}) + "\n")
    (mixed / "gone.jsonl").symlink_to(d / "does_not_exist.jsonl")
    p["mixed"] = mixed
    (p.setdefault("no_text_field", d / "no_text_field.jsonl")).write_text(json.dumps({"content": "words " * 40}) + "\n")
    # token corpora: bytes (vocabulary 260) and the same ids claimed to come from a 49,152-token vocabulary
    write_token_corpus(d / "corpus", {"code": _byte_docs()}, shards=1, vocab_size=260)
    write_token_corpus(d / "corpus_49k", {"code": _byte_docs()}, shards=1, vocab_size=49152)
    (d / "corpus_damaged").mkdir()
    (d / "corpus_damaged" / "manifest.json").write_text('{"tokenizer": "", "sources": {')
    p["corpus"], p["corpus_49k"] = d / "corpus", d / "corpus_49k"
    return p


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    """Two small SentencePiece tokenizers (400 and 420 pieces) trained on the same text."""
    from intern_jax.tokenizer import train_sentencepiece

    d = tmp_path_factory.mktemp("tokenizers")
    text = d / "text.txt"
    text.write_text("\n".join(f.read_text(encoding="utf-8", errors="replace")
                              for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:4]))
    out = {}
    for name, vocab in (("a", 400), ("b", 420)):
        out[name] = d / name
        train_sentencepiece([text], d / f"{name}.model", vocab).save(out[name])
    return out


@pytest.fixture(scope="session")
def tiny_model(tokenizers, tmp_path_factory) -> Path:
    """A native checkpoint of the tiny model (random weights) with tokenizer ``a``: quick to load and compile."""
    import dataclasses

    import jax

    from intern_jax.checkpoint import save_native
    from intern_jax.config import load_config
    from intern_jax.model import internlm2
    from intern_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizers["a"])
    cfg = dataclasses.replace(load_config(ROOT / "configs/model/tiny.py"), vocab_size=tokenizer.vocab_size)
    path = tmp_path_factory.mktemp("tiny_model") / "model"
    save_native(path, cfg, internlm2.init(cfg, jax.random.key(0)), tokenizer)
    return path


PRETRAIN = ["--config", TINY, "--quiet", "--set", "data.path={corpus}", "--set", "model.vocab_size=260",
            "--set", "tokenizer=", "--set", "seq_len=32", "--set", "batch_size=2", "--set", "data.holdout=0",
            "--set", "eval.every=0", "--set", "logging.tensorboard=false", "--set", "logging.log_every=1"]

# (id, script, args, exit status, phrases that must appear in stdout + stderr)
CASES = [
    # 1. NaN and infinity are rejected, naming the setting
    ("generate-temperature-nan", "generate.py", ["--model", "{gguf}", "--prompt", "hi", "--temperature", "nan"],
     2, ["--temperature must be a finite number, got nan"]),
    ("generate-repetition-penalty-nan", "generate.py",
     ["--model", "{gguf}", "--prompt", "hi", "--repetition-penalty", "nan"], 2,
     ["--repetition-penalty must be a finite"]),
    ("chat-temperature-inf", "chat.py", ["--model", "{gguf}", "--temperature", "inf"], 2, ["--temperature must be a"]),
    ("pretrain-learning-rate-nan", "pretrain.py", [*PRETRAIN, "--set", "optimizer.learning_rate=nan"], 2,
     ["optimizer.learning_rate must be a finite number, got nan"]),
    ("finetune-lora-alpha-nan", "finetune.py",
     ["--config", ROOT / "configs/finetune/smollm2_lora_sft.py", "--set", "lora.alpha=nan"], 2,
     ["lora.alpha must be a finite number"]),
    ("finetune-quant-block-0", "finetune.py",
     ["--config", ROOT / "configs/finetune/internlm2_7b_qlora_chat.py", "--set", "quant.block=0"], 2,
     ["quant.block must be an even number >= 2"]),
    # 3. an overflowing seed names --seed
    ("generate-seed-overflow", "generate.py", ["--model", "{gguf}", "--prompt", "hi", "--seed", "9" * 23], 2,
     ["--seed must be in [0, 2**32)"]),
    # 2. non-UTF-8 prompt bytes are replaced with a warning (the model path is missing: nothing is loaded)
    ("generate-prompt-not-utf8", "generate.py", ["--model", "{dir}/missing", "--prompt", "caf\udce9 \udcff\udcfe hi"],
     2, ["warning: --prompt is not valid UTF-8: 3 byte(s) replaced", "checkpoint path", "does not exist"]),
    ("generate-empty-prompt", "generate.py", ["--model", "{gguf}", "--prompt", ""], 2, ["--prompt is empty"]),
    # 4. chat-data format detection reads the whole first line and names the script's flag
    ("check-dataset-long-first-line", "check_dataset.py", ["{long_jsonl}"], 0, ["2/2 rows kept"]),
    ("check-dataset-not-json-names-format", "check_dataset.py", ["{not_json}"], 2, ["set --format to"]),
    ("check-dataset-empty", "check_dataset.py", ["{empty_jsonl}"], 2, ["empty.jsonl is empty (no records)"]),
    ("check-dataset-binary", "check_dataset.py", ["{binary}"], 2, ["binary.jsonl looks like a binary file"]),
    ("check-dataset-bad-byte-line-3", "check_dataset.py", ["{bad_byte}"], 1,
     ["bad_byte.jsonl:3: not UTF-8: byte 0xe9", "3/4 rows kept"]),
    ("check-dataset-lone-surrogate", "check_dataset.py", ["{surrogate}", "--model", "{tok_a}", "--format", "text"], 1,
     ["surrogate.jsonl:1: bad text: text holds a lone surrogate", "1/2 rows kept"]),
    ("check-dataset-directory", "check_dataset.py", ["{dir}"], 2, ["is a directory, not a dataset file"]),
    # 5. the tiny config's vocab_size=0 without its tokenizer (a fresh clone) is a clear error, not an IndexError
    ("plan-tiny-without-tokenizer", "plan.py", ["--config", TINY, "--devices", "2", "--set", "tokenizer={dir}/no_tok"],
     2, ["no_tok does not exist (model.vocab_size is 0", "--set model.vocab_size=N"]),
    ("plan-devices-0", "plan.py", ["--config", TINY, "--devices", "0"], 2, ["--devices must be >= 1"]),
    # 6. a corpus tokenized with a larger vocabulary than the run's model: refused before the first step
    ("pretrain-corpus-vocab-49k", "pretrain.py", [*PRETRAIN, "--set", "data.path={corpus_49k}"], 2,
     ["was tokenized with a 49152-token vocabulary", "model's vocab_size is 260"]),
    ("pretrain-corpus-manifest-damaged", "pretrain.py", [*PRETRAIN, "--set", "data.path={dir}/corpus_damaged"], 2,
     ["corpus_damaged/manifest.json is damaged"]),
    # 7. build_corpus checks its settings before doing any work
    ("build-corpus-max-code-mb-0", "build_corpus.py", ["--output", "{dir}/corpus_a", "--max-code-mb", "0"], 2,
     ["--max-code-mb) must be at least"]),
    ("build-corpus-vocab-size-0", "build_corpus.py", ["--output", "{dir}/corpus_b", "--vocab-size", "0"], 2,
     ["--vocab-size) must be between"]),
    ("build-corpus-vocab-too-large", "build_corpus.py",
     ["--output", "{dir}/corpus_c", "--vocab-size", "200000", "--max-code-mb", "0.5", "--quiet"], 2,
     ["cannot train a 200000-token tokenizer", "Please set it to a value <="]),
    # loading errors in generate.py / chat.py: one line each
    ("generate-model-not-a-model", "generate.py", ["--model", "{empty_dir}", "--prompt", "hi"], 2,
     ["holds no recognisable checkpoint"]),
    ("generate-truncated-gguf", "generate.py", ["--model", "{gguf}", "--prompt", "hi"], 2,
     ["truncated.gguf is not a readable GGUF file"]),
    ("chat-truncated-safetensors", "chat.py", ["--model", "{hf}"], 2, ["model.safetensors is not a readable"]),
    ("chat-run-without-checkpoint", "chat.py", ["--model", "{run_unfinished}"], 2, ["holds no finished checkpoint"]),
    ("generate-damaged-run-json", "generate.py", ["--model", "{run_damaged}", "--prompt", "hi"], 2,
     ["run.json is not a readable run description"]),
    # --output that is an existing file
    ("pretrain-output-is-a-file", "pretrain.py", [*PRETRAIN, "--output", "{file}"], 2,
     ["--output", "a_file is a file, not a directory"]),
    ("process-data-output-is-a-file", "process_data.py", ["--input", "{no_text_field}", "--output", "{file}"], 2,
     ["a_file is a file, not a directory"]),
    ("build-corpus-output-under-a-file", "build_corpus.py", ["--output", "{file}/corpus"], 2,
     ["a_file is a file, not a directory"]),
    ("convert-output-is-a-file", "convert.py", ["--input", "{gguf}", "--output", "{file}", "--to", "llama"], 2,
     ["a_file is a file, not a directory"]),
    # process_data.py: nothing kept is an error that says why
    ("process-data-no-text-field", "process_data.py", ["--input", "{no_text_field}", "--output", "{dir}/pd_a",
                                                       "--quiet"], 2, ["no documents were kept", "readers.text_field"]),
    ("process-data-binary-file", "process_data.py", ["--input", "{binary_txt}", "--output", "{dir}/pd_c", "--quiet"],
     2, ["no documents were kept", "files that are not UTF-8 text"]),
    ("process-data-names-the-file-it-could-not-read", "process_data.py",
     ["--input", "{mixed}", "--output", "{dir}/pd_d", "--quiet", "--set", "output.tokenizer={tok_a}"], 0,
     ["warning: dropped 1 x files that disappeared before they were read:", "gone.jsonl", "wrote"]),
    ("process-data-empty-file", "process_data.py", ["--input", "{empty_jsonl}", "--output", "{dir}/pd_b", "--quiet"], 2,
     ["no documents were kept", "empty.jsonl"]),
    # pretrain.py: --steps 0 and wrong types
    ("pretrain-steps-0", "pretrain.py", [*PRETRAIN, "--steps", "0", "--output", "{dir}/pt_steps0"], 2,
     ["--steps must be >= 1"]),
    ("pretrain-wrong-type", "pretrain.py", [*PRETRAIN, "--set", "optimizer.learning_rate=fast"], 2,
     ["optimizer.learning_rate expects a number, got 'fast'"]),
    ("pretrain-config-syntax-error", "pretrain.py", ["--config", "{syntax_error}"], 2,
     ["syntax_error.py is not valid Python: '(' was never closed (line 1)"]),
    ("pretrain-save-every-negative", "pretrain.py", ["--config", TINY, "--save-every", "-1"], 2,
     ["--save-every must be >= 0"]),
    ("pretrain-coordinator-without-port", "pretrain.py",
     ["--config", TINY, "--coordinator", "node0", "--num-processes", "2", "--process-id", "0"], 2,
     ["--coordinator 'node0': give HOST:PORT"]),
    ("pretrain-config-is-a-directory", "pretrain.py", ["--config", "{dir}"], 2,
     ["is a directory; give a Python config"]),
]


@pytest.fixture(scope="session")
def results(inputs, tokenizers) -> dict:
    """Every case of ``CASES``, two subprocesses at a time."""
    paths = {**inputs, "tok_a": tokenizers["a"]}

    def one(case):
        _, script, args, _, _ = case
        return _run(script, *[a.format(**paths) if isinstance(a, str) else a for a in args])

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(zip([c[0] for c in CASES], pool.map(one, CASES)))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(case, results):
    name, script, _, want_code, phrases = case
    code, out, err = results[name]
    assert "Traceback" not in err, err[-3000:]
    assert code == want_code, f"exit status {code}, wanted {want_code}\n{out[-1500:]}\n{err[-3000:]}"
    for phrase in phrases:
        assert phrase in out + err, f"{phrase!r} not in the output:\n{out[-1500:]}\n{err[-3000:]}"
    if want_code == 2:
        assert err.strip().splitlines()[-1].startswith(f"{script}: error: "), err


def test_build_corpus_checks_before_writing_anything_and_quiet_is_quiet(inputs, results):
    assert results["build-corpus-max-code-mb-0"][0] == 2
    assert not (inputs["dir"] / "corpus_a").exists() and not (inputs["dir"] / "corpus_b").exists()
    assert "it/s" not in results["build-corpus-vocab-too-large"][2]  # --quiet: no progress bar


@pytest.mark.parametrize("error, message", [
    (PermissionError(13, "Permission denied", "/runs/x"), "/runs/x: permission denied; check its permissions"),
    (OSError(30, "Read-only file system", "/mnt/ro/run"), "/mnt/ro/run: read-only file system; the file system is"),
    (IsADirectoryError(21, "Is a directory", "/data"), "/data: is a directory; a file was expected here"),
])
def test_os_errors_become_one_line_with_the_path_and_what_to_do(error, message):
    """Read-only or unwritable output (not reproducible as root in a subprocess): the line the entry prints."""
    from intern_jax.cli import describe

    assert describe(error).startswith(message)


def test_a_closed_stdout_pipe_ends_quietly(tmp_path):
    """``check_dataset.py big.jsonl --limit 0 | head -1``: exit status 141, no traceback."""
    (tmp_path / "big.jsonl").write_text('{"messages": []}\n' * 50000)
    cmd = [sys.executable, str(ROOT / "scripts/check_dataset.py"), str(tmp_path / "big.jsonl"), "--limit", "0"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, inputs):
    args = ["--model", inputs["gguf"], "--prompt", "hi", "--temperature", "nan"]
    code, _, err = _run("generate.py", *args, *(["--debug"] if how == "flag" else []),
                        env=_env(INTERN_JAX_DEBUG="1") if how == "env" else None)
    assert code == 1 and "Traceback" in err and "--temperature must be a finite number" in err


def test_chat_session_survives_bad_bytes_and_unknown_commands(tiny_model):
    """One line with bytes that are not UTF-8 is answered (bytes replaced, with a warning), an unknown
    /command is not sent to the model, and the conversation goes on to the next message."""
    stdin = b"caf\xe9 \xff\xfe hello\n/frobnicate\nHi\n/quit\n"
    code, out, err = _run("chat.py", "--model", tiny_model, "--max-new-tokens", "2", stdin=stdin)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    assert "warning: this message is not valid UTF-8: 3 byte(s) replaced" in err
    assert "unknown command /frobnicate" in err
    assert out.count("assistant> ") == 2, out  # the bad-bytes line and "Hi"; not the command


def test_orphaned_checkpoint_read_errors_are_dropped_and_other_task_errors_kept():
    """asyncio's "Task exception was never retrieved", as a failed read's sibling tasks raise it when they
    are collected (at any moment, so also before the script's error line): dropped when the exception
    comes from orbax's code, reported otherwise."""
    import asyncio
    import gc
    import logging

    from intern_jax.cli import OrphanedReadErrors

    def failing_coroutine(filename):
        scope = {}
        exec(compile("async def read():\n    raise ValueError('OUT_OF_RANGE')\n", filename, "exec"), scope)
        return scope["read"]()

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.exc_info[1].__traceback__.tb_frame.f_code.co_filename if record.exc_info else None)

    log = logging.getLogger("asyncio")
    handler, flt, level = Keep(), OrphanedReadErrors(), log.level
    log.addHandler(handler)
    log.addFilter(flt)
    log.setLevel(logging.ERROR)  # a script ending on its error in this process turned the logger down
    try:
        for filename in (os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py"),
                         os.path.join(os.sep, "site-packages", "mine", "reader.py")):
            loop = asyncio.new_event_loop()
            task = loop.create_task(failing_coroutine(filename))
            loop.run_until_complete(asyncio.sleep(0))
            assert task.done()  # failed, and its exception never retrieved
            loop.close()
            del task
            gc.collect()  # the unretrieved exception is reported now
    finally:
        log.removeHandler(handler)
        log.removeFilter(flt)
        log.setLevel(level)
    assert seen == [os.path.join(os.sep, "site-packages", "mine", "reader.py")]


def test_a_damaged_native_checkpoint_is_one_line(tiny_model, tmp_path):
    import shutil

    damaged = shutil.copytree(tiny_model, tmp_path / "model")
    for f in (damaged / "params").rglob("*"):
        if f.is_file() and f.parent.name == "d" and f.parent.parent.name.startswith("ocdbt"):  # array data
            f.write_bytes(f.read_bytes()[:100])
    code, _, err = _run("generate.py", "--model", damaged, "--prompt", "hi")
    # (the other reads of the failed load end on a closed event loop in tensorstore's threads; their
    # reports must not follow the line)
    assert code == 2 and "params cannot be read" in err and "the checkpoint is damaged" in err, err[-3000:]
    assert "Traceback" not in err and "never retrieved" not in err, err[-3000:]
    assert err.strip().count("\n") == 0, err[-3000:]


def test_convert_rerun_after_an_interruption_starts_over(tiny_model, tmp_path):
    """An interrupted conversion leaves only ``.<out>.partial`` (never a half-written output that would
    block the rerun); the rerun replaces it and the result loads."""
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")
    code, out, err = _run("convert.py", "--input", tiny_model, "--output", tmp_path / "out", "--to", "native",
                          "--quiet")
    assert code == 0, err[-3000:]
    assert not partial.exists() and "wrote native checkpoint" in out
    from intern_jax.checkpoint import load_model

    assert load_model(tmp_path / "out").config.vocab_size == load_model(tiny_model).config.vocab_size


def test_pretrain_ctrl_c_saves_a_checkpoint_exits_130_and_the_rerun_resumes(inputs, tmp_path):
    args = [sys.executable, str(ROOT / "scripts/pretrain.py"),
            *[a.format(**inputs) if isinstance(a, str) else str(a) for a in PRETRAIN],
            "--save-every", "0", "--output", str(tmp_path / "run")]
    proc = subprocess.Popen([*args, "--steps", "100000"], env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    step = int(err.split("checkpoint saved at step ")[1].split()[0])
    assert step >= 2 and (tmp_path / "run" / "checkpoints" / str(step)).is_dir(), err
    done = subprocess.run([*args, "--steps", "1"], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"is already at step {step} (steps: 1); nothing to train" in done.stderr
    again = subprocess.run([*args, "--steps", str(step + 1)], env=_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"step {step + 1}/{step + 1}" in again.stdout and f"step {step}/" not in again.stdout
    assert "Metadata file does not exist" not in again.stderr  # routine orbax warnings stay quiet


def test_pretrain_refuses_a_corpus_tokenized_with_another_tokenizer(inputs, tokenizers, tmp_path):
    """The manifest's tokenizer is compared with the run's before the first step, and the message
    says what differs."""
    from intern_jax.data.pipeline import write_token_corpus

    write_token_corpus(tmp_path / "corpus", {"code": _byte_docs(2)}, shards=1, vocab_size=260,
                       tokenizer=str(tokenizers["b"]))
    args = [a.format(**{**inputs, "corpus": tmp_path / "corpus"}) if isinstance(a, str) else a for a in PRETRAIN]
    code, _, err = _run("pretrain.py", *args, "--set", f"tokenizer={tokenizers['a']}", "--set", "model.vocab_size=0",
                        "--output", tmp_path / "run")
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert "not with the run's tokenizer" in err and "vocabularies of 420 and 400 tokens" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_plan_takes_the_vocabulary_of_the_tiny_configs_tokenizer(tokenizers):
    """plan.py's vocab_size=0 fix: the tokenizer fills it when it exists (as in training)."""
    from intern_jax.tokenizer import load_tokenizer
    from intern_jax.train.config import load_train_config
    from intern_jax.train.pretrain import resolve_vocab_size

    cfg = resolve_vocab_size(load_train_config(TINY, [f"tokenizer={tokenizers['a']}"]))
    assert cfg.model_config.vocab_size == load_tokenizer(tokenizers["a"]).vocab_size > 0


def test_a_moved_run_directory_still_finds_its_tokenizer(tmp_path):
    """run.json names the tokenizer copied into the run relative to the run directory."""
    from intern_jax.checkpoint.run import read_run_json, run_tokenizer_path, write_run_json
    from intern_jax.config import ModelConfig

    cfg = ModelConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32)
    (tmp_path / "run" / "tokenizer").mkdir(parents=True)
    write_run_json(tmp_path / "run", cfg, None, tmp_path / "run" / "tokenizer")
    (tmp_path / "run").rename(tmp_path / "moved")
    record = read_run_json(tmp_path / "moved")
    assert record["tokenizer"] == "tokenizer"
    assert run_tokenizer_path(tmp_path / "moved", record) == tmp_path / "moved" / "tokenizer"
