"""A sweep spread over a work pool: two process workers, results in SeaweedFS S3, the session's Prefect server.

The variants run at once as deployment runs under the sweep, the baseline is evaluated once between them, and the
comparison equals an in-process sweep's.
"""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from components.local_stack import start, stop
from servers import ensure_bucket, prefect_api, seaweed_s3, use_only_these_aws_credentials
from tiny import tiny_sweep

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
BUCKET = "quantflow-spread"


def _prefect(*args: str) -> None:
    proc = subprocess.run([PREFECT, "--no-prompt", *args], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def api():
    with prefect_api() as client:
        yield client


@pytest.fixture
def pool(api, data_root, tmp_path, monkeypatch):
    """quantflow-local with two variant slots, two workers, and an S3Bucket block for results on SeaweedFS."""
    with seaweed_s3(tmp_path / "weed") as s3:
        ensure_bucket(s3, BUCKET)
        use_only_these_aws_credentials(monkeypatch, s3, tmp_path)  # the workers and their runs inherit them
        blocks = subprocess.run([sys.executable, "infra/s3_result_storage.py", "--bucket", BUCKET, "--endpoint-url",
                                 s3.endpoint_url, "--block-name", "spread-results"], cwd=ROOT, capture_output=True, text=True)
        assert blocks.returncode == 0, blocks.stderr
        _prefect("work-pool", "create", "quantflow-local", "--type", "process", "--overwrite")
        _prefect("deploy", "--all", "--prefect-file", "infra/prefect.yaml")
        deployment = api.get("/deployments/name/quantize-variant/quantize-variant").json()["id"]
        r = api.patch(f"/deployments/{deployment}", json={"concurrency_limit": 2})  # a pool of two GPU slots
        assert r.status_code == 204, r.text
        workers = [start([PREFECT, "worker", "start", "--pool", "quantflow-local", "--limit", "1", "--name", f"w{i}"],
                         data_root / f"spread-worker-{i}.log",
                         {"QUANTFLOW_PROJECT_DIR": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"}) for i in (1, 2)]
        try:
            yield "s3-bucket/spread-results"
        finally:
            for w in workers:
                stop(w)


def _times(api, run_id: str) -> tuple[datetime, datetime]:
    run = api.get(f"/flow_runs/{run_id}").json()
    return datetime.fromisoformat(run["start_time"]), datetime.fromisoformat(run["end_time"])


def test_sweep_spreads_over_two_workers(api, pool, tiny_model, data_root):
    from flows.sweep import SweepSpec, comparison_rows, sweep

    home = data_root / "spread-home"  # not the session's: the in-process sweep below computes on its own
    data = tiny_sweep(tiny_model, ["w8a8-int8", "fp8-dynamic"], calibration__seed=11, evaluation__limit=4,
                      evaluation__seed=11, evaluation__serving={"enabled": False})
    spec = SweepSpec.model_validate({**data, "dispatch": "deployments", "job_variables": {"env": {
        "QUANTFLOW_HOME": str(home), "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect-results"),
        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": pool}}})
    outcomes = sweep(spec)
    assert [o.name for o in outcomes] == ["tiny-llama-quantized.w8a8", "tiny-llama-FP8-dynamic"]
    assert all(Path(o.checkpoint).is_relative_to(home) for o in outcomes)  # made by the workers, in their home

    # Two deployment runs, linked under the sweep, on the pool, at the same time.
    runs = [api.get(f"/flow_runs/{o.flow_run_id}").json() for o in outcomes]
    assert all(r["deployment_id"] and r["parent_task_run_id"] for r in runs)
    parents = {api.get(f"/task_runs/{r['parent_task_run_id']}").json()["flow_run_id"] for r in runs}
    assert len(parents) == 1
    (s1, e1), (s2, e2) = (_times(api, o.flow_run_id) for o in outcomes)
    print(f"\ntimeline: {outcomes[0].name} {s1:%H:%M:%S.%f}-{e1:%H:%M:%S.%f}; "
          f"{outcomes[1].name} {s2:%H:%M:%S.%f}-{e2:%H:%M:%S.%f}")
    assert max(s1, s2) < min(e1, e2), "the variant runs did not overlap"

    # lm_eval ran three times across both runs: each variant once and the base once (the other run's baseline waited
    # for it under the artifact's lock, or hit the cache).
    logs, page = [], None
    while page != []:
        page = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [o.flow_run_id for o in outcomes]}},
                                              "limit": 200, "offset": len(logs)}).json()
        assert isinstance(page, list), page
        logs += page
    evaluations = [entry for entry in logs if entry["message"].startswith("lm_eval (")]
    assert len(evaluations) == 3, [e["message"] for e in evaluations]

    local = sweep(SweepSpec.model_validate(data))
    assert comparison_rows(outcomes, spec.variants()) == comparison_rows(local, spec.variants())
