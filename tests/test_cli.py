"""The CLI commands a person types that talk to the Prefect server."""
from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from flows.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_deploy_then_status(monkeypatch):
    monkeypatch.chdir(ROOT)
    runner = CliRunner()
    result = runner.invoke(app, ["deploy"])
    assert result.exit_code == 0, result.output
    with httpx.Client(base_url=os.environ["PREFECT_API_URL"]) as api:
        for flow, name in (("quantize-variant", "quantize-variant"), ("sweep", "sweep")):
            assert api.get(f"/deployments/name/{flow}/{name}").status_code == 200
        deployment = api.get("/deployments/name/quantize-variant/quantize-variant").json()["id"]
        # created cancelled: a worker of another test must not pick it up
        for _ in range(5):  # the SQLite-backed test server can answer 5xx while another writer holds the database
            resp = api.post(f"/deployments/{deployment}/create_flow_run",
                            json={"parameters": {}, "state": {"type": "CANCELLED", "name": "Cancelled"}})
            if resp.status_code < 500:
                break
            time.sleep(1)
        assert resp.status_code == 201, resp.text
        run = resp.json()
    result = runner.invoke(app, ["status", "--limit", "50"])
    assert result.exit_code == 0, result.output
    assert run["name"] in result.output and "quantize-variant" in result.output and "Cancelled" in result.output
