"""The main job on the embedded defaults, end to end: corpus -> pretraining -> LoRA fine-tuning -> chat -> tools.

    python scripts/demo.py [--only corpus,pretrain,finetune,chat,tools] [--runs DIR]

1. builds the embedded corpus (Python standard library source and docstrings -> cleaning, language
   routing, filters, dedup -> SentencePiece tokenizer -> ArrayRecord token shards) in runs/corpus;
2. pretrains the tiny config on it (the training and held-out losses fall; loss.png / throughput.png
   in the run directory);
3. LoRA-fine-tunes the embedded SmolLM2-135M-Instruct on a generated persona set and prints
   its answers before and after;
4. chats with SmolLM2 (streaming);
5. closes the chain with an agent: generates a seeded tool-use set (arithmetic word problems answered through
   calculator calls in the agent's own Hermes-style format, plus questions that need no tool), LoRA-fine-tunes
   SmolLM2 on it into runs/demo-smollm2-tools (``scripts/agent.py --model runs/demo-smollm2-tools`` loads it),
   and prints the base and fine-tuned models' success rates on held-out problems.

Each stage is one of the project's command-line scripts, printed before it runs, so every step can be
repeated by hand. Rerunning resumes: finished corpus shards and finished runs are not redone.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from intern_jax import cli  # light: no jax

ROOT = Path(__file__).resolve().parents[1]

STAGES = ("corpus", "pretrain", "finetune", "chat", "tools")


def run(args: list[str]) -> None:
    """Run one project script with this interpreter, echoing the command; stop the demo if it fails."""
    cmd = [sys.executable, *args]
    print("$ " + " ".join(shlex.quote(a) for a in ["python", *args]), flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"demo: `{' '.join(args)}` failed with exit status {code}")
    print(f"   ({time.perf_counter() - start:.0f}s)\n", flush=True)


def loss_summary(run_dir: Path) -> str:
    """A few (step, loss) points of a run's metrics.jsonl, first to last, and its held-out losses."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "loss" in r]
    if not records:
        return "no metrics logged"
    picks = records[:: max(1, len(records) // 5)] + [records[-1]]
    seen, points = set(), []
    for r in picks:
        if r["step"] not in seen:
            seen.add(r["step"])
            points.append(f"step {r['step']}: {r.get('loss_mean', r['loss']):.2f}")
    summary = "mean loss per logging window  " + "  ->  ".join(points)
    evaluated = [r for r in records if "eval_loss" in r]
    if evaluated:
        summary += "\n   held-out loss  " + "  ->  ".join(f"step {r['step']}: {r['eval_loss']:.2f}" for r in evaluated)
    return summary


def chat(prompt: str, max_new_tokens: int) -> None:
    import jax  # noqa: PLC0415

    import intern_jax as ij  # noqa: PLC0415  (jax is imported only for this stage)
    from kernels import cpu as native_cpu  # noqa: PLC0415

    path = ij.embedded_model_path()
    start = time.perf_counter()
    # the file's own Q4_1 / Q8_0 blocks kept packed when the native CPU kernel multiplies them: the same
    # values as the float32 load, decoded faster (docs/benchmarks.md); otherwise float32 (the XLA packed
    # path is slower than float32)
    packed = jax.default_backend() == "cpu" and native_cpu.available()
    model = ij.load_model(path, keep_quantized=packed)
    cfg = model.config
    model = ij.Decoder.from_model(model)
    weights = "the file's Q4_1/Q8_0 blocks kept packed (native CPU kernel)" if packed else "float32"
    print(f"   {path.name}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}; "
          f"weights: {weights}; loaded in {time.perf_counter() - start:.1f}s", flush=True)
    print(f"== user: {prompt}\n== assistant: ", end="", flush=True)
    sampling = ij.SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    _, result = ij.generate_text(
        model, [{"role": "user", "content": prompt}], sampling,
        on_text=lambda piece: print(piece, end="", flush=True),
    )
    s = result.stats()
    print(f"\n== {s['generated_tokens']} tokens; decode {s['decode_tokens_per_s']:.1f} tok/s, "
          f"prefill {s['prefill_tokens_per_s']:.1f} tok/s, compile {s['compile_s']:.1f}s", flush=True)


@cli.entry("demo.py")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages out of {STAGES}")
    parser.add_argument("--runs", default="runs", help="directory for the corpus and the run directories")
    parser.add_argument("--prompt", default="Explain in two sentences what a KV cache is in a language model.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {STAGES}")
    runs = Path(args.runs)
    corpus, pretrain_dir, lora_dir = runs / "corpus", runs / "demo-pretrain-tiny", runs / "demo-smollm2-lora"

    if "corpus" in stages:
        print("== 1. the embedded corpus: the Python standard library, processed and tokenized", flush=True)
        run(["scripts/build_corpus.py", "--output", str(corpus)])
    if "pretrain" in stages:
        print("== 2. pretraining the tiny InternLM2-shaped model on it", flush=True)
        run(["scripts/pretrain.py", "--config", "configs/pretrain/tiny.py", "--quiet",
             "--set", f"data.path={corpus}", "--set", f"tokenizer={corpus / 'tokenizer'}",
             "--output", str(pretrain_dir)])
        run(["scripts/plot_metrics.py", str(pretrain_dir)])
        print(f"   {loss_summary(pretrain_dir)}\n   plots: {pretrain_dir / 'loss.png'}, "
              f"{pretrain_dir / 'throughput.png'}\n", flush=True)
    if "finetune" in stages:
        print("== 3. LoRA fine-tuning SmolLM2-135M-Instruct on a generated persona set", flush=True)
        run(["scripts/finetune.py", "--config", "configs/finetune/smollm2_lora_sft.py", "--quiet",
             "--output", str(lora_dir),
             "--compare", "Who are you?", "--compare", "What is the capital of Italy?"])
    if "chat" in stages:
        print("== 4. chatting with the embedded SmolLM2 (streaming)", flush=True)
        chat(args.prompt, args.max_new_tokens)
    if "tools" in stages:
        print("== 5. an agent: fine-tuning SmolLM2 to call the calculator, then scoring it on held-out problems",
              flush=True)
        data, tools_dir = runs / "tool-data", runs / "demo-smollm2-tools"
        run(["scripts/make_tool_data.py", "--output", str(data / "train.jsonl"),
             "--heldout", str(data / "heldout.jsonl")])
        run(["scripts/finetune.py", "--config", "configs/finetune/smollm2_tools.py", "--quiet",
             "--set", f"train.data.path={data / 'train.jsonl'}", "--output", str(tools_dir)])
        run(["scripts/eval_tools.py", "--with-base", "--model", str(tools_dir),
             "--problems", str(data / "heldout.jsonl")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
