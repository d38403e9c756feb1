"""A real crash: scripts/process_data.py killed with SIGKILL mid-run, then rerun, redoes no
finished shard and writes exactly what an uninterrupted run writes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from intern_jax.data.processing import runner, shards
from intern_jax.data.processing.config import OutputConfig, ProcessingConfig
from intern_jax.data.processing.documents import StageStats
from intern_jax.tokenizer import train_sentencepiece

ROOT = Path(__file__).resolve().parents[3]
WORDS = ("harbour lantern orchard meadow thunder copper velvet glacier saddle parcel whistle timber "
         "compass marble ribbon candle pebble quarry lattice beacon").split()
NUM_FILES = 12


def _corpus(root: Path, rng: random.Random) -> Path:
    root.mkdir()
    for f in range(NUM_FILES):
        with open(root / f"part{f:02d}.jsonl", "w") as fh:
            for _ in range(60):
                fh.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120)))}) + "\n")
    return root


def _outputs(directory: Path):
    manifest = shards.load_manifest(directory)
    records = {s: [r.tolist() for f in e["files"] for r in shards.read_records(directory / f)]
               for s, e in manifest["sources"].items()}
    return {s: (e["documents"], e["tokens"], records[s])
            for s, e in manifest["sources"].items()}


def _markers(out: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "work" / "clean").glob("*.done")}


@pytest.mark.slow
def test_sigkilled_run_resumes_without_redoing_finished_shards(tmp_path, seed):
    rng = random.Random(seed)  # fresh each run (the property holds for any input), reproducible from the seed
    raw = _corpus(tmp_path / "raw", rng)
    text = tmp_path / "tok.txt"
    text.write_text("\n".join(" ".join(rng.sample(WORDS, 10)) for _ in range(200)))
    tok = train_sentencepiece([text], tmp_path / "sp", 300)
    tok.save(tmp_path / "tokenizer")
    sets = ["num_workers=2", "shard_bytes=1", f"output.tokenizer={tmp_path / 'tokenizer'}"]
    cfg = ProcessingConfig(num_workers=2, shard_bytes=1)
    total = len(runner.plan_shards([raw], cfg, StageStats("read")))
    assert total == NUM_FILES

    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "scripts" / "process_data.py"), "--input", str(raw), "--output", str(out),
           "--quiet", *(a for s in sets for a in ("--set", s))]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_markers(out) if (out / "work" / "clean").is_dir() else {}) < 3:
        assert proc.poll() is None, f"process_data.py ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no shard finished within 120 s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the script and its worker processes, no chance to clean up
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _markers(out)
    assert 3 <= len(before) < total, "the kill came too late to leave unfinished shards"
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _markers(out)
    assert len(after) == total
    assert all(after[name] == value for name, value in before.items())  # finished shards were not redone
    assert not list((out / "work" / "clean").glob(".*.tmp"))  # half-written files of the killed run replaced

    clean = tmp_path / "clean"
    runner.process([raw], clean, ProcessingConfig(num_workers=1, shard_bytes=1,
                                                  output=OutputConfig(tokenizer=str(tmp_path / "tokenizer"))),
                   progress=False)
    assert _outputs(out) == _outputs(clean)
    killed_stats = json.loads((out / "stats.json").read_text())["stages"]
    clean_stats = json.loads((clean / "stats.json").read_text())["stages"]
    for name, s in clean_stats.items():  # every document counted once, however the run was split
        assert (killed_stats[name]["docs_in"], killed_stats[name]["docs_out"]) == (s["docs_in"], s["docs_out"])
