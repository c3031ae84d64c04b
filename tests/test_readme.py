"""The README's Deployments steps, pasted into a fresh shell exactly as written, give a working stack.

A fresh shell: no PREFECT_API_URL, no MLflow URI, the repository as working directory; only QUANTFLOW_HOME (a scratch
dir) and the two ports (free ones, through `server up`'s own environment variables) differ from a user's.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import warnings
from pathlib import Path

import httpx

from components.local_stack import free_port
from servers import prefect_api

ROOT = Path(__file__).resolve().parents[1]


def deployment_steps() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deployments"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_the_deployments_steps_work_in_a_fresh_shell(tmp_path):
    steps = deployment_steps()
    assert [s.split()[1] for s in steps] == ["server", "deploy", "worker"], steps
    prefect_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "QUANTFLOW_", "MLFLOW_"))}
    env.update(QUANTFLOW_HOME=str(tmp_path / "home"), QUANTFLOW_PREFECT_PORT=str(prefect_port),
               QUANTFLOW_MLFLOW_PORT=str(mlflow_port), PREFECT_HOME=str(tmp_path / "prefect-cli"))

    def sh(line: str, timeout: float = 300) -> str:
        proc = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    api = f"http://127.0.0.1:{prefect_port}/api"
    worker = None
    try:
        out = sh(steps[0])
        assert f"Prefect UI: http://127.0.0.1:{prefect_port}" in out and f"MLflow UI: http://127.0.0.1:{mlflow_port}" in out
        assert "<html" in httpx.get(f"http://127.0.0.1:{prefect_port}/", timeout=30).text.lower()  # the dashboard
        assert httpx.get(f"http://127.0.0.1:{mlflow_port}/health", timeout=30).status_code == 200
        sh(steps[1])
        with prefect_api(api) as client:
            names = {d["name"] for d in client.post("/deployments/filter", json={}).json()}
        assert {"quantize-variant", "sweep"} <= names, names

        worker = subprocess.Popen(["bash", "-c", f"exec {steps[2]}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            with prefect_api(api) as client:
                workers = client.post("/work_pools/quantflow-local/workers/filter", json={}).json()
            if workers:
                break
            assert worker.poll() is None, worker.stdout.read()
            time.sleep(1)
        assert workers, "the worker never polled its pool"
        # The stack is what quantflow commands now use, with nothing exported (without one, status exits 1).
        sh(".venv/bin/quantflow status")
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGINT)
            try:  # Prefect's worker, run alone, stops on Ctrl-C in under a second (13 tries, also with the CPUs busy)
                worker.wait(30)
            except subprocess.TimeoutExpired:
                # In the full suite it has hung in its own teardown after printing 'Received SIGINT' (3 runs of 3 on
                # 2026-12-05, once past 90 s): Prefect's code, not the README's steps, which this test checks.
                os.killpg(worker.pid, signal.SIGKILL)
                warnings.warn("the Prefect worker was still running 30 s after Ctrl-C (killed):\n"
                              + worker.communicate()[0][-2000:], stacklevel=1)
        down = subprocess.run([".venv/bin/quantflow", "server", "down"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "Stopped" in down.stdout, down.stdout + down.stderr
    assert not (tmp_path / "home" / "stack" / "stack.json").exists()
