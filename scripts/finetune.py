"""Fine-tune a model (full, LoRA or QLoRA) on SFT or plain-text data: config file, --set overrides,
resumable run directory.

    python scripts/finetune.py --config configs/finetune/smollm2_lora_sft.py [--set a.b=v ...]
        [--output DIR] [--steps N] [--save-every N] [--compare "Who are you?" ...]

Rerunning the same command resumes. The run directory holds the adapters (or full params),
run.json (base model, LoRA and quantization settings) and metrics.jsonl; export with
scripts/convert.py --input DIR --to {llama,internlm2,peft}. Exit status: 0 done, 2 bad
configuration or input, 3 the run diverged (last good state saved), 130 interrupted (checkpoint saved).
"""

from __future__ import annotations

import argparse
import sys

from intern_jax import cli  # light: no jax


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="fine-tune config file (binds `config` to a FinetuneConfig)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set lora.rank=16 (repeatable)")
    ap.add_argument("--output", help="run directory (default: runs/<config name>)")
    ap.add_argument("--steps", type=int, help="total training steps (overrides train.steps)")
    ap.add_argument("--save-every", type=int, help="checkpoint every N steps (overrides train.checkpoint.save_every)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--compare", action="append", default=[], metavar="QUESTION",
                    help="after training, print the base model's and the fine-tuned model's greedy answers "
                         "(adapter runs; repeatable)")
    cli.add_debug_flag(ap)
    return ap


def compare_answers(run_dir, questions, *, max_new_tokens: int = 48) -> list[dict]:
    """Greedy chat answers of the base model and of the fine-tuned run to each question.

    Returns ``[{"question", "base", "tuned", "tuned_stopped"}]``; ``tuned_stopped`` is True when the
    fine-tuned answer ended on a stop token (``<|im_end|>``) rather than the token limit.
    """
    from intern_jax.checkpoint import load_model  # noqa: PLC0415  (jax: not needed for --help)
    from intern_jax.checkpoint.run import read_run_json  # noqa: PLC0415
    from intern_jax.inference import Decoder, SamplingParams, generate_text  # noqa: PLC0415

    record = read_run_json(run_dir)
    base, tuned = load_model(record["base_model"]), load_model(run_dir)
    decoders = {"base": Decoder.from_model(base)}
    try:  # the fine-tune on the base model's compiled programs when its weights have the same shapes
        if getattr(tuned, "execution", None) != getattr(base, "execution", None):
            raise ValueError("another execution policy")
        decoders["tuned"] = decoders["base"].with_params(tuned.params)
    except ValueError:
        decoders["tuned"] = Decoder.from_model(tuned)
    sampling = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    out = [{"question": q} for q in questions]
    for label, model in decoders.items():
        for row in out:
            text, result = generate_text(model, [{"role": "user", "content": row["question"]}], sampling)
            row[label] = text
            row[f"{label}_stopped"] = result.finish_reasons[0] == "stop"
    return out


@cli.entry("finetune.py")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from intern_jax.train.finetune import finetune, load_finetune_config  # noqa: PLC0415
    from intern_jax.train.loop import run_from_cli  # noqa: PLC0415

    code, output = run_from_cli("finetune.py", args, load_finetune_config, finetune)
    if code:
        return code
    if args.compare:
        for row in compare_answers(output, args.compare):
            print(f"\n== user: {row['question']}\n-- base:       {row['base']}\n-- fine-tuned: {row['tuned']}"
                  + ("" if row["tuned_stopped"] else "  [hit the token limit]"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
