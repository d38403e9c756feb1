"""Every GPU figure of the project in one call, on whatever accelerator this machine has.

    PYTHONUNBUFFERED=1 python scripts/bench/device_suite.py --out DIR [--smoke] [--parts NAME ...]

Writes DIR/device_suite.json (every number, part by part, rewritten after each part),
DIR/device_suite.md (the table for docs/benchmarks.md, with device, jax version and date) and
DIR/device_suite.log (each part's own output). The parts, in the order they run (cheapest
first, so that a slow compile near the end of the budget costs the fewest figures):

  calibration  bf16 matmul TFLOP/s (8192^3) and device-to-device copy GB/s, the ceilings below;
  flash        kernels/flash_attention.py fwd and fwd+bwd against jax.nn.dot_product_attention
               with cuDNN and with XLA: causal, GQA (32 query / 8 kv heads), head dim 128, bf16,
               seq 2k (batch 4) and 8k (batch 1);
  paged        kernels/paged_attention.py decode, batch 64, 4k context, bf16 and int8 KV: GB/s as
               a share of the copy bandwidth (the jnp gather reference timed beside it);
  qmatmul      kernels/quantized_matmul.py W4A16 / W8A16 at M = 1, 16, 64 against bf16 jnp.dot,
               4096x4096 and 4096x14336;
  qlora        device peak memory of one InternLM2-7B QLoRA step at seq 2048 (the fine-tuning
               recipe), beside the CPU plan's 9.25 GiB;
  decode       decode step time of the InternLM2-1.8B shape through the public ``Decoder`` + ``generate`` at
               batch 1 and 64, against the HBM roofline (weight + KV bytes per step / copy bandwidth);
  train        one InternLM2-1.8B train step at seq 4096 on synthetic tokens (the project's train
               step, the pretraining recipe's model settings), XLA and Pallas attention: tokens/s, MFU.

Each part runs in its own Python process under its own time box, inside a budget for the whole
suite (8 minutes wall on a device, compiles included): a part that raises, fails a correctness
check, or runs out of time records the error and its traceback's tail, keeps what it measured,
and the suite goes on. The exit code is the number of parts that did not finish cleanly.

Timing: every program is compiled ahead of time first, and the compile seconds are reported;
then each is timed with ``block_until_ready`` over several repetitions and the median is kept.
Products too short to time one call at a time (the M <= 64 matmuls) run as a loop of dependent
calls inside one program (``lax.fori_loop``: one call site, compiled once). Inputs are random, never
zeros. ``--smoke`` runs the same code at tiny shapes (on CPU: Pallas kernels in interpret mode,
as ``kernels/backend.py`` decides) in under a minute; its numbers only show that the code runs.

Pallas lowering: the kernels pass ``triton.CompilerParams``, which selects the Triton lowering on
jax 0.10 and 0.11 alike (Mosaic GPU is the default for a ``pallas_call`` without them; see
``kernels/__init__.py``). jax 0.11 warns at every Triton lowering that the backend is deprecated;
the suite records such warnings once per part instead of printing them.

Imports: only what the GPU machine's image has (jax, numpy, optax, ...): the parts live in
``scripts/bench/device_parts.py``, and tests/bench/test_device_suite.py runs ``--smoke`` with
every other installed package hidden. This process imports no jax, so only the parts' own
processes hold the device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.bench.device_parts import NEEDS_CALIBRATION, PARTS  # noqa: E402

BUDGET_S = {"device": 460.0, "smoke": 300.0}  # the whole suite; a part gets min(its box, what is left)
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
MIN_PART_S = 15.0  # a part is skipped (and counted as failed) when less than this is left
REL_ERR_TOLERANCE = 3e-2  # bf16 kernels against their peers: flags wrong results, not rounding


# ------------------------------------------------------------------------------ one part, in its own process


class Part:
    """What a part records: rows of measurements, headline results, errors; saved after each change."""

    def __init__(self, name: str, smoke: bool, calibration: dict, path: Path):
        self.name, self.smoke, self.calibration, self.path = name, smoke, calibration, path
        self.rows: list[dict] = []
        self.results: dict = {}
        self.summary: list[list[str]] = []  # [figure, value, against] lines of the markdown table
        self.errors: list[dict] = []
        self.warnings: dict[str, int] = {}
        self.env: dict = {}
        self.status = "running"

    def save(self):
        record = {k: getattr(self, k) for k in ("status", "results", "rows", "summary", "errors", "warnings", "env")}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=jsonable))
        tmp.replace(self.path)

    def row(self, **row):
        self.rows.append(row)
        print(json.dumps(row, default=jsonable), flush=True)
        self.save()
        return row

    def line(self, figure: str, value: str, against: str = ""):
        self.summary.append([figure, value, against])
        self.save()

    def error(self, what: str, exc: BaseException | None = None, message: str = ""):
        entry = {"what": what, "error": message or f"{type(exc).__name__}: {exc}"}
        if exc is not None:
            entry["traceback_tail"] = "".join(traceback.format_exception(exc))[-3000:]
        self.errors.append(entry)
        print(f"ERROR {what}: {entry['error']}", flush=True)
        self.save()

    def check(self, what: str, rel_err: float, tolerance: float = REL_ERR_TOLERANCE) -> bool:
        if not math.isfinite(rel_err) or rel_err > tolerance:
            self.error(what, message=f"relative error {rel_err:.3g} against the peer exceeds {tolerance}")
            return False
        return True


def jsonable(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def _measure(name: str, smoke: bool, calibration: dict, path: Path) -> int:
    """Run part ``name`` in this process, recording into ``path``; 0 when it finished cleanly, else 1."""
    part = Part(name, smoke, calibration, path)
    part.save()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            part.env = _environment()
            PARTS[name][0](part)
        except BaseException as e:  # noqa: BLE001 - recorded; the parent goes on with the next part
            part.error(name, e)
        for w in caught:
            text = str(w.message).splitlines()[0][:300] if str(w.message) else w.category.__name__
            part.warnings[text] = part.warnings.get(text, 0) + 1
    part.status = "failed" if part.errors else "ok"
    part.save()
    return 1 if part.errors else 0


def _environment() -> dict:
    import jax

    device = jax.devices()[0]
    mosaic_default = getattr(jax.config, "jax_pallas_use_mosaic_gpu", None)
    return {
        "device": device.device_kind, "platform": device.platform, "device_count": jax.device_count(),
        "jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", None) or _version("jaxlib"),
        "python": sys.version.split()[0], "compute_capability": getattr(device, "compute_capability", None),
        "pallas": "interpret" if _interpret() else "triton (triton.CompilerParams)",
        "pallas_default_gpu_lowering": None if mosaic_default is None else "mosaic_gpu" if mosaic_default else "triton",
    }


def _version(package):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _interpret() -> bool:
    from kernels.backend import resolve_interpret

    return resolve_interpret(None)


# ------------------------------------------------------------------------------ the suite


def _run_part(name: str, box: float, smoke: bool, calibration: dict, scratch: Path, log) -> dict:
    """Run one part in a child process under ``box`` seconds; its record, or why there is none."""
    path = scratch / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-part", name, "--result", str(path),
           "--calibration", json.dumps(calibration)] + (["--smoke"] if smoke else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    if smoke:  # tiny programs whose timings mean nothing: compile them fast
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()
    log.write(f"\n===== {name} (time box {box:.0f} s) =====\n")
    log.flush()
    start = time.perf_counter()
    # its own process group (not session), so that it and whatever it starts can be stopped together, and
    # a caller that ends this process's session ends them too
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, process_group=0)
    timed_out = False
    try:
        proc.wait(timeout=box)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:  # past its time box, or this process interrupted: the part stops too
        if proc.poll() is None:
            _kill_group(proc)
    wall = time.perf_counter() - start
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {"status": "failed", "results": {}, "rows": [], "summary": [], "warnings": {}, "env": {},
                  "errors": [{"what": name, "error": f"the part's process exited with {proc.returncode} and left "
                                                     "no record; see device_suite.log"}]}
    if timed_out:
        record["status"] = "timeout"
        record["errors"].append({"what": name, "error": f"ran past its time box of {box:.0f} s and was stopped; "
                                                        "what it measured before is kept"})
    elif record["status"] == "running" or (record["status"] == "ok" and proc.returncode != 0):
        record["status"] = "failed"
        record["errors"].append({"what": name, "error": f"the part's process died (exit {proc.returncode}); "
                                                        f"see device_suite.log"})
    record.update(wall_s=round(wall, 1), time_box_s=round(box, 1))
    return record


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended meanwhile
        pass
    proc.wait()


class Interrupted(Exception):
    """SIGTERM or SIGINT reached the suite: the running part is stopped and the report written."""


def _interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def to_markdown(report: dict) -> str:
    env = report.get("env") or {}
    ceilings = report["parts"].get("calibration", {}).get("results", {})
    lines = [
        f"#### Device suite{' (smoke: tiny shapes, timings mean nothing)' if report['smoke'] else ''}: "
        f"{env.get('device', 'unknown device')}, jax {env.get('jax', '?')}, {report['date']}",
        "",
        f"- Command: `{report['command']}`; wall {report['wall_s']:.0f} s (budget {report['budget_s']:.0f} s); "
        f"{report['failed']} of {len(report['parts'])} parts failed.",
        f"- Platform {env.get('platform', '?')}, jaxlib {env.get('jaxlib', '?')}, Python {env.get('python', '?')}, "
        f"Pallas: {env.get('pallas', '?')}.",
    ]
    if ceilings.get("matmul_tflops"):
        lines.append(f"- Ceilings measured in this run: bf16 matmul {ceilings['matmul_tflops']:.1f} TFLOP/s, "
                     f"copy {ceilings['copy_gb_per_s']:.0f} GB/s.")
    seen: dict[str, list[str]] = {}
    for name, record in report["parts"].items():
        for text in record.get("warnings", {}):
            seen.setdefault(text, []).append(name)
    for text, names in list(seen.items())[:5]:
        lines.append(f"- Warning ({', '.join(names)}): {text[:200]}")
    lines += ["", "| part | figure | value | against |", "|---|---|---|---|"]
    for name, record in report["parts"].items():
        for figure, value, against in record.get("summary", []):
            lines.append(f"| {name} | {figure} | {value} | {against} |")
        if record["status"] != "ok":
            first = (record.get("errors") or [{"error": ""}])[0]
            message = first["error"].splitlines()[0][:200].replace("|", "/") if first["error"] else ""
            lines.append(f"| {name} | **{record['status']}** ({record.get('wall_s', 0):.0f} s) | {message} | |")
    return "\n".join(lines) + "\n"


def _not_run(name: str, status: str, why: str) -> dict:
    return {"status": status, "results": {}, "rows": [], "summary": [], "warnings": {},
            "errors": [{"what": name, "error": why}], "wall_s": 0.0}


def _finish(out: Path, report: dict, start: float):
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["failed"] = sum(r["status"] != "ok" for r in report["parts"].values())
    _write(out, report)


def _write(out: Path, report: dict):
    (out / "device_suite.json").write_text(json.dumps(report, indent=1, default=jsonable) + "\n")
    (out / "device_suite.md").write_text(to_markdown(report))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="directory for device_suite.json, device_suite.md and device_suite.log")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (on CPU: Pallas in interpret mode)")
    parser.add_argument("--parts", nargs="+", metavar="NAME", help=f"run only these (from {', '.join(PARTS)})")
    parser.add_argument("--budget-s", type=float, help="wall-clock budget of the whole suite "
                        f"(default {BUDGET_S['device']:.0f} s, {BUDGET_S['smoke']:.0f} s with --smoke)")
    parser.add_argument("--time-box-s", type=float, help="give every part this time box instead of its own "
                        "(e.g. on a slower device); the suite's budget still holds")
    parser.add_argument("--run-part", help=argparse.SUPPRESS)  # the child process of one part
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--calibration", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_part:
        return _measure(args.run_part, args.smoke, json.loads(args.calibration), Path(args.result))

    if not args.out:
        parser.error("--out DIR is required (the directory the results are written to)")
    names = [n for item in (args.parts or list(PARTS)) for n in item.split(",") if n]
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if NEEDS_CALIBRATION & set(names) and "calibration" not in names:
        names.insert(0, "calibration")  # the ceilings the other parts are measured against
    names = [n for n in PARTS if n in names]
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s if args.budget_s is not None else BUDGET_S["smoke" if args.smoke else "device"]
    for flag, value in (("--budget-s", budget), ("--time-box-s", args.time_box_s)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            parser.error(f"{flag} must be a positive number of seconds, got {value}")

    start = time.perf_counter()
    report = {
        "suite": "device_suite", "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "scripts/bench/device_suite.py", *(argv if argv is not None else sys.argv[1:])]),
        "smoke": args.smoke, "budget_s": budget, "wall_s": 0.0, "failed": 0, "env": {}, "parts": {},
    }
    calibration: dict = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    with tempfile.TemporaryDirectory() as scratch, open(out / "device_suite.log", "w") as log:
        try:
            for name in names:
                left = budget - (time.perf_counter() - start)
                own_box = args.time_box_s or PARTS[name][2 if args.smoke else 1]
                box = min(own_box, left)
                if box < min(MIN_PART_S, own_box):
                    record = _not_run(name, "skipped", f"not run: {max(left, 0):.0f} s of the suite's {budget:.0f} s "
                                                       "budget left")
                else:
                    record = _run_part(name, box, args.smoke, calibration, Path(scratch), log)
                report["parts"][name] = record
                if name == "calibration" and record["status"] == "ok":
                    calibration = record["results"]
                report["env"] = report["env"] or record.get("env") or {}
                _finish(out, report, start)
                errors = "; ".join(e["error"].splitlines()[0][:160] for e in record["errors"][:3])
                print(f"[{name}] {record['status']} in {record['wall_s']:.1f} s" + (f": {errors}" if errors else ""),
                      flush=True)
        except Interrupted as e:  # the running part was stopped; the rest are not run
            for name in names:
                report["parts"].setdefault(name, _not_run(name, "interrupted", f"{e} stopped the suite"))
            _finish(out, report, start)
            print(f"interrupted by {e}; wrote what was measured to {out}", flush=True)
            return report["failed"]
    print()
    print(to_markdown(report))
    print(f"wrote {out / 'device_suite.json'}, {out / 'device_suite.md'} and {out / 'device_suite.log'}")
    return report["failed"]


if __name__ == "__main__":
    sys.exit(main())
