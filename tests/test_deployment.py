"""Deploy from infra/prefect.yaml, start a process worker, and launch a run as the UI's Run button does."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import prefect_api
from tiny import tiny_spec

from components.local_stack import start, stop

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _prefect(*args: str) -> str:
    proc = subprocess.run([PREFECT, "--no-prompt", *args], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def api() -> httpx.Client:
    with prefect_api() as client:
        yield client


@pytest.fixture(scope="module")
def worker(data_root, api):
    _prefect("work-pool", "create", "quantflow-local", "--type", "process", "--overwrite")
    _prefect("deploy", "--all", "--prefect-file", "infra/prefect.yaml")
    log = data_root / "worker.log"
    proc = start([PREFECT, "worker", "start", "--pool", "quantflow-local", "--limit", "1"], log,
                 {"QUANTFLOW_PROJECT_DIR": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"})
    yield proc
    stop(proc)
    assert proc.poll() is not None


def _deployment_id(api, flow: str, name: str) -> str:
    r = api.get(f"/deployments/name/{flow}/{name}")
    r.raise_for_status()
    return r.json()["id"]


def test_run_button_runs_the_flow_on_the_worker(api, worker, tiny_model, data_root):
    deployment = _deployment_id(api, "quantize-variant", "quantize-variant")
    home = data_root / "deployed-home"
    spec = tiny_spec(tiny_model, evaluation__limit=4)
    r = api.post(f"/deployments/{deployment}/create_flow_run",
                 json={"parameters": {"spec": spec},
                       "job_variables": {"env": {"QUANTFLOW_HOME": str(home),
                                                 "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect-results")}}})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    deadline = time.time() + 900
    while time.time() < deadline:
        state = api.get(f"/flow_runs/{run_id}").json()["state"]["type"]
        if state in TERMINAL:
            break
        assert worker.poll() is None, "worker died"
        time.sleep(2)
    assert state == "COMPLETED", (data_root / "worker.log").read_text()[-4000:]
    artifacts = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    [table] = [a for a in artifacts if a["key"] == "recovery-table"]
    assert "| **Average" in table["data"] and "Gate:" in table["data"]
    assert list(home.glob("checkpoints/*/README.md"))
    # the run's page lists its task runs by what they do, in the cards' order
    steps = ["resolve base model", "build calibration set", "quantize w8a8-int8", "evaluate base", "evaluate variant",
             "write card", "publish", "record in MLflow"]
    deadline = time.time() + 60  # task runs reach the server as events, after the flow run's state
    while time.time() < deadline:
        runs = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}},
                                                   "sort": "EXPECTED_START_TIME_ASC"}).json()
        if len(runs) >= len(steps):
            break
        time.sleep(1)
    assert [t["name"] for t in runs] == steps


def test_invalid_parameters_rejected_by_the_server(api, worker):
    deployment = _deployment_id(api, "quantize-variant", "quantize-variant")
    # (unknown top-level keys pass: the schema Prefect generates does not forbid additional properties)
    for bad in ({"spec": {"scheme": "fp9"}}, {"spec": {"calibration": {"num_samples": 0}}},
                {"spec": {"stores": [{"kind": "ftp"}]}}):
        r = api.post(f"/deployments/{deployment}/create_flow_run", json={"parameters": bad})
        assert r.status_code == 409 or r.status_code == 422, (bad, r.status_code, r.text)


def test_sweep_is_deployed_with_a_typed_form(api, worker):
    r = api.get(f"/deployments/{_deployment_id(api, 'sweep', 'sweep')}")
    schema = r.json()["parameter_openapi_schema"]
    spec = schema["definitions"]["SweepSpec"]["properties"]
    assert spec["schemes"]["items"]["$ref"].endswith("Scheme")
    assert set(schema["definitions"]["Scheme"]["enum"]) == {"fp8-static", "w8a8-int8", "fp8-dynamic", "w4a16"}


SLEEPER = '''
import time
from prefect import flow


@flow
def sleeper(seconds: float = 30):
    time.sleep(seconds)
'''


def test_a_cancelled_run_leaves_the_limit_of_one_intact(api, tmp_path, data_root):
    """The README's promise, "later runs wait", after a cancel: run A cancelled while running, then B runs and C, made
    while B runs, waits for it (a deployment with quantflow's concurrency settings: limit 1, ENQUEUE; a process
    worker with no limit of its own)."""
    from prefect import flow
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    (tmp_path / "sleeper.py").write_text(SLEEPER)
    pool = "quantflow-limit-test"
    _prefect("work-pool", "create", pool, "--type", "process", "--overwrite")
    deployment = str(flow.from_source(str(tmp_path), "sleeper.py:sleeper").deploy(
        "limit-1", work_pool_name=pool, print_next_steps=False, concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)))
    log = data_root / "limit-worker.log"
    proc = start([PREFECT, "worker", "start", "--pool", pool], log, {"PREFECT_WORKER_QUERY_SECONDS": "1"})

    def state(run_id: str) -> str:
        return api.get(f"/flow_runs/{run_id}").json()["state"]["type"]

    def until(run_id: str, wanted: set[str], timeout: float = 180) -> str:
        deadline = time.time() + timeout
        while (now := state(run_id)) not in wanted:
            assert time.time() < deadline and proc.poll() is None, (run_id, now, log.read_text()[-3000:])
            time.sleep(0.5)
        return now

    def run(seconds: float) -> str:
        r = api.post(f"/deployments/{deployment}/create_flow_run", json={"parameters": {"seconds": seconds}})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    try:
        a = run(120)
        until(a, {"RUNNING"})
        r = api.post(f"/flow_runs/{a}/set_state", json={"state": {"type": "CANCELLING", "name": "Cancelling"}})
        assert r.status_code in (200, 201), r.text
        until(a, {"CANCELLED"})
        b = run(30)
        until(b, {"RUNNING"})
        c = run(1)
        seen = []
        while (b_now := state(b)) == "RUNNING":
            seen.append(state(c))
            assert seen[-1] != "RUNNING", f"C ran beside B with a limit of 1: {seen}\n{log.read_text()[-3000:]}"
            time.sleep(1)
        assert b_now == "COMPLETED" and len(seen) >= 10, (b_now, seen)
        until(c, {"COMPLETED"})  # and C's turn came
    finally:
        stop(proc)
