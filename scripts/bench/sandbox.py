"""The Python sandbox's start latency and per-call overhead, per isolation mode, against plain subprocesses.

    python scripts/bench/sandbox.py [--starts 20] [--calls 200]

Measured in one run, interleaved round by round so that load on a shared machine falls on every row alike:

- start: a new ``PythonSandbox`` until its first trivial call (``pass``) has answered, per isolation mode
  (``process``, ``namespaces``); peer: ``subprocess.run([python, "-c", "pass"])`` (and with ``-I``);
- call: a trivial call (``x = 1``) in a warm stateful session, per mode; peers: the same
  ``subprocess.run`` (a fresh interpreter per call, what a stateless tool without a session costs) and a
  ``stateful=False`` sandbox (a fresh sandboxed process per call).

Prints a table of medians and 90th percentiles in milliseconds with the ratio to the ``subprocess.run``
peer, and the same as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from intern_jax.agent.sandbox import PythonSandbox

try:
    from machine import cpu_name  # scripts/bench/machine.py, beside this file
except ImportError:  # run as a module from elsewhere
    cpu_name = platform.processor


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def start_once(isolation: str) -> float:
    sandbox = PythonSandbox(isolation=isolation)
    try:
        ms = timed(lambda: check(sandbox.run("pass")))
        if sandbox.isolation != isolation:
            raise RuntimeError(f"asked for {isolation}, got {sandbox.isolation}: {sandbox.isolation_detail}")
        return ms
    finally:
        sandbox.close()


def check(result) -> None:
    if result.status != "success":
        raise RuntimeError(f"the sandbox failed a trivial call: {result.error}")


def plain(*flags: str) -> float:
    return timed(lambda: subprocess.run([sys.executable, *flags, "-c", "pass"], check=True))


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered), 3),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3), "n": len(ordered)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=20, help="sandbox starts per mode (and peer runs)")
    ap.add_argument("--calls", type=int, default=200, help="trivial calls per warm session")
    args = ap.parse_args(argv)
    if args.starts < 1 or args.calls < 1:
        ap.error("--starts and --calls must be at least 1")

    modes = ["process", "namespaces"]
    with PythonSandbox(isolation="namespaces") as probe:
        if probe.run("pass").status != "success":
            print(f"namespaces are not available here ({probe.run('pass').error}); measuring process only",
                  file=sys.stderr)
            modes = ["process"]

    peers = ["subprocess.run python -c", "subprocess.run python -I -c"]
    starts: dict[str, list[float]] = {m: [] for m in [*modes, *peers]}
    for _ in range(args.starts):  # round-robin: every row sees the same load
        for m in modes:
            starts[m].append(start_once(m))
        starts["subprocess.run python -c"].append(plain())
        starts["subprocess.run python -I -c"].append(plain("-I"))

    calls: dict[str, list[float]] = {f"warm {m} session": [] for m in modes}
    sessions = {m: PythonSandbox(isolation=m) for m in modes}
    stateless = {m: PythonSandbox(isolation=m, stateful=False) for m in modes}
    try:
        for s in sessions.values():
            check(s.run("pass"))
        per_fresh = max(1, args.calls // 10)
        for m in modes:
            calls[f"stateless {m} sandbox"] = []
        calls["subprocess.run python -c"] = []
        for i in range(args.calls):
            for m in modes:
                calls[f"warm {m} session"].append(timed(lambda s=sessions[m]: check(s.run("x = 1"))))
            if i < per_fresh:
                for m in modes:
                    calls[f"stateless {m} sandbox"].append(timed(lambda s=stateless[m]: check(s.run("x = 1"))))
                calls["subprocess.run python -c"].append(plain())
    finally:
        for s in [*sessions.values(), *stateless.values()]:
            s.close()

    record = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "python": platform.python_version(),
              "kernel": platform.release(), "load_average": [round(x, 2) for x in os.getloadavg()],
              "start": {k: summary(v) for k, v in starts.items()}, "call": {k: summary(v) for k, v in calls.items()}}
    for kind, peer in (("start", "subprocess.run python -c"), ("call", "subprocess.run python -c")):
        base = record[kind][peer]["median_ms"]
        print(f"\n{kind}: median / p90 ms (x the subprocess.run peer's median)")
        for name, row in record[kind].items():
            print(f"  {name:32s} {row['median_ms']:9.2f} {row['p90_ms']:9.2f}   x{row['median_ms'] / base:.3g}")
    print(f"\nload average {record['load_average']} on {record['machine']}")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
