"""Start-up benchmark: one `scripts/generate.py` command, end to end, with the persistent compilation cache
cold, warm, and turned off (the peer: every run compiles everything, as before the cache).

    python scripts/bench/startup.py [--model PATH] [--new-tokens 32] [--repeats 2]

Each run is a fresh process (`--chat`, greedy, `--stats`); a cold run starts from an empty cache directory,
a warm run reuses the directory a cold run filled. Reports the wall seconds of the whole command and the
compile seconds `generate` measured (for a warm run: reading the programs back). Prints a JSON line and a
markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # this directory: run as a script

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "Explain how a refrigerator works."


def run(model: str, new_tokens: int, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["INTERN_JAX_COMPILATION_CACHE"] = cache
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "scripts/generate.py"), "--model", model, "--chat", QUESTION,
                           "--max-new-tokens", str(new_tokens), "--stats"],
                          env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"generate.py failed:\n{done.stderr[-3000:]}")
    stats = next(json.loads(line) for line in reversed(done.stderr.splitlines()) if line.startswith("{"))
    return {"wall_s": wall, "compile_s": stats["compile_s"], "text": done.stdout}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model path (default: the embedded SmolLM2 GGUF)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each kind (median reported)")
    args = ap.parse_args(argv)
    if args.model is None:
        sys.path.insert(0, str(ROOT))
        from intern_jax.checkpoint import embedded_model_path

        args.model = str(embedded_model_path())
    runs: dict[str, list[dict]] = {"cache off (peer)": [], "cache cold": [], "cache warm": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
            runs["cache off (peer)"].append(run(args.model, args.new_tokens, "off"))
            runs["cache cold"].append(run(args.model, args.new_tokens, tmp))
            runs["cache warm"].append(run(args.model, args.new_tokens, tmp))
    texts = {r["text"] for rs in runs.values() for r in rs}
    if len(texts) != 1:
        raise SystemExit(f"the runs printed {len(texts)} different texts; the cache changed the output")
    summary = {kind: {"wall_s": round(statistics.median(r["wall_s"] for r in rs), 2),
                      "compile_s": round(statistics.median(r["compile_s"] for r in rs), 2)}
               for kind, rs in runs.items()}
    off, warm = summary["cache off (peer)"], summary["cache warm"]
    record = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "cpu": cpu_name(), "cores": os.cpu_count(), "load_avg": os.getloadavg(), "model": args.model,
              "new_tokens": args.new_tokens, "repeats": args.repeats, "runs": summary,
              "warm_vs_off_wall": round(off["wall_s"] / warm["wall_s"], 2),
              "warm_vs_off_compile": round(off["compile_s"] / max(warm["compile_s"], 1e-3), 1)}
    print(json.dumps(record))
    print("\n| generate.py run | wall s (whole command) | compile s (inside generate) |\n|---|---|---|")
    for kind, s in summary.items():
        print(f"| {kind} | {s['wall_s']} | {s['compile_s']} |")
    print(f"\nwarm cache vs no cache: {record['warm_vs_off_wall']}x less wall time, "
          f"{record['warm_vs_off_compile']}x less compile time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
