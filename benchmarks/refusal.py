"""How long `quantflow run` takes to refuse a spec whose base model does not exist (run by hand, never in tests).

    .venv/bin/python benchmarks/refusal.py [--repeats 3]

Each repeat runs `quantflow run --spec <spec>` in a fresh QUANTFLOW_HOME, with no Prefect API set (a temporary server
starts beside preflight, as on a first run) and the Hub offline, and checks it was refused for the missing base. Prints
each wall time, their median and the load average before and after (this figure moves with the machine's load: say it
with the number). Spec errors (an unknown field) are refused before any of this and are not timed here.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def refusal_s(tmp: Path) -> float:
    spec = tmp / "bad.yaml"
    spec.write_text(f"base:\n  source: {tmp / 'no-such-model'}\nscheme: w8a8-int8\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "QUANTFLOW_MLFLOW_TRACKING_URI")}
    env.update(QUANTFLOW_HOME=str(tmp / "home"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    start = time.time()
    r = subprocess.run([str(BIN / "quantflow"), "run", "--spec", str(spec)], env=env, capture_output=True, text=True)
    wall = time.time() - start
    if r.returncode != 1 or "no such directory or file" not in r.stderr:
        raise RuntimeError(f"not the refusal expected (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    before = os.getloadavg()
    walls = []
    for _ in range(a.repeats):
        tmp = Path(tempfile.mkdtemp(prefix="qf-refusal-"))
        try:
            walls.append(refusal_s(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    after = os.getloadavg()
    each = ", ".join(f"{w:.2f}" for w in walls)
    print(f"refusal (missing base): median {statistics.median(walls):.2f} s (each: {each}); load average (1 min) "
          f"{before[0]:.1f} before, {after[0]:.1f} after; {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
