"""No secret leaves a run: one flow run with real credentials in its environment, then everything it left is searched.

The run publishes to a real SeaweedFS S3 server (credentials enforced, given as AWS_* variables) with HF_TOKEN and a
Prefect-API-key-like variable set to values made up at run time. Then every trace of the run is read back: the files
under the test session's data dir (QUANTFLOW_HOME: cards, manifests, lm-eval outputs and logs, Prefect results; the
Prefect and MLflow servers' databases and artifact stores), the MLflow runs (params, tags, metric names, artifacts
downloaded), the registered model version, the Prefect flow run (parameters, logs, artifacts, task runs), and every
object and its metadata in the bucket. None may hold any secret, raw, base64 or URL-encoded.

Before that run, the same credentials (and an AWS session token) are offered the way users put them where they do not
belong, inside URLs (the S3 endpoint, the store URI, the Hub endpoint; as user info and as query parameters, e.g. a
presigned URL's X-Amz-Security-Token) through `quantflow run --spec`: refused before any flow run exists. The scan
then also reads what the command printed, the published manifests by name, every flow run's parameters in the
Prefect database (through the API), every log record of every flow run, and every log file under the data dir.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import secrets
import sys
import urllib.parse
from pathlib import Path

import pytest

from servers import ensure_bucket, seaweed_s3, use_only_these_aws_credentials
from tiny import tiny_spec

from components.specs import VariantSpec

pytestmark = pytest.mark.skipif(not os.environ.get("PREFECT_API_URL") or not os.environ.get("QUANTFLOW_MLFLOW_TRACKING_URI"),
                                reason="needs the session's Prefect and MLflow servers (QUANTFLOW_TEST_SERVERS=1)")


def forms(secret: str) -> list[bytes]:
    """The ways a secret could be written down."""
    raw = secret.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), urllib.parse.quote(secret, safe="").encode()]


class Scanner:
    def __init__(self, named: dict[str, str]):
        self.named = named
        self.patterns = [(name, f) for name, s in named.items() for f in forms(s)]
        self.seen: dict[str, int] = {}  # where -> how many items were read there
        self.leaks: list[str] = []

    def check(self, where: str, item: str, data: bytes | str | None) -> None:
        if data is None:
            return
        data = data.encode() if isinstance(data, str) else data
        self.seen[where] = self.seen.get(where, 0) + 1
        for name, pattern in self.patterns:
            if pattern in data:
                self.leaks.append(f"{name} in {where}: {item}")

    def tree(self, where: str, root: Path) -> None:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                self.check(where, str(p), p.read_bytes())


def prefect_records(flow_run_id):
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterId, LogFilter, LogFilterFlowRunId)

    async def go():
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return run, logs, artifacts, tasks

    return anyio.run(go)


def all_flow_runs_and_logs():
    """Every flow run in the Prefect database and every log record, page by page (the API caps a page at 200)."""
    import anyio
    from prefect import get_client

    async def go():
        async with get_client() as client:
            runs, logs = [], []
            while page := await client.read_flow_runs(offset=len(runs), limit=200):
                runs += page
            while page := await client.read_logs(offset=len(logs), limit=200):
                logs += page
            return runs, logs

    return anyio.run(go)


def test_no_secret_in_anything_a_run_leaves(tiny_model, data_root, tmp_path, monkeypatch):
    import boto3
    import mlflow

    from flows.quantize_variant import quantize_variant

    with seaweed_s3(tmp_path / "weed", buckets=("qf-secrets",)) as s3:
        ensure_bucket(s3, "qf-secrets")
        hf_token = "hf_" + secrets.token_hex(17)
        api_key = "pnu_" + secrets.token_hex(18)
        sts_token = "FwoGZXIvYXdzE" + secrets.token_hex(24)  # the shape of an AWS session token
        use_only_these_aws_credentials(monkeypatch, s3, tmp_path)
        monkeypatch.setenv("HF_TOKEN", hf_token)
        monkeypatch.setenv("QUANTFLOW_FAKE_PREFECT_API_KEY", api_key)  # the shape of a Prefect Cloud key, in the env
        monkeypatch.setenv("PREFECT_API_KEY", api_key)  # a local server ignores it; nothing may record it

        # Credentials inside URLs: refused by `quantflow run --spec` before anything runs, without echoing them.
        cli = str(Path(sys.executable).parent / "quantflow")
        offered = []
        for i, store in enumerate([
                {"kind": "s3", "uri": "s3://qf-secrets/checkpoints",
                 "endpoint_url": s3.endpoint_url.replace("://", f"://{s3.access_key}:{s3.secret_key}@")},
                {"kind": "s3", "uri": f"s3://{s3.access_key}:{s3.secret_key}@qf-secrets/checkpoints"},
                {"kind": "hub", "uri": "qf-org/x", "endpoint_url": f"https://{hf_token}@hub.example"},
                # and in the query string: a presigned URL's session token, a Hub token as a parameter
                {"kind": "s3", "uri": "s3://qf-secrets/checkpoints",
                 "endpoint_url": f"{s3.endpoint_url}/?X-Amz-Date=20261204T000000Z&X-Amz-Security-Token={sts_token}"},
                {"kind": "hub", "uri": "qf-org/x", "endpoint_url": f"https://hub.example/?token={hf_token}"}]):
            bad = tmp_path / f"bad-{i}.yaml"
            bad.write_text(json.dumps({"base": {"source": str(tiny_model)}, "stores": [store]}))
            r = subprocess.run([cli, "run", "--spec", str(bad)], capture_output=True, text=True, timeout=120)
            assert r.returncode == 1 and "carries credentials in the URL" in r.stderr, r.stdout + r.stderr
            offered.append(r.stdout + r.stderr)
        for path in tmp_path.glob("bad-*.yaml"):
            path.unlink()  # the user's own files: not a trace the run left

        spec = VariantSpec.model_validate(tiny_spec(
            tiny_model, variant_name="tiny-secrets-w8a8",
            stores=[{"kind": "local", "uri": str(tmp_path / "published")},
                    {"kind": "s3", "uri": "s3://qf-secrets/checkpoints", "endpoint_url": s3.endpoint_url}]))
        state = quantize_variant(spec, return_state=True)
        outcome = state.result()
        flow_run_id = state.state_details.flow_run_id

        scan = Scanner({"AWS secret key": s3.secret_key, "HF token": hf_token, "Prefect API key": api_key,
                        "AWS session token": sts_token})

        # 1. Files: QUANTFLOW_HOME, the servers' stores, the published folder.
        scan.tree("session data dir", data_root)
        scan.tree("local store", tmp_path / "published")

        # 2. MLflow: the variant run, its baseline run, the registered version.
        mlflow.set_tracking_uri(os.environ["QUANTFLOW_MLFLOW_TRACKING_URI"])
        client = mlflow.MlflowClient()
        run = client.get_run(outcome.mlflow_run_id)
        children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        for r in [run, *children]:
            for k, v in {**r.data.params, **r.data.tags}.items():
                scan.check("MLflow params/tags", f"{r.info.run_id} {k}", f"{k}={v}")
            for k in r.data.metrics:
                scan.check("MLflow metric names", k, k)
            dest = tmp_path / "mlflow-artifacts" / r.info.run_id
            dest.mkdir(parents=True)
            mlflow.artifacts.download_artifacts(run_id=r.info.run_id, dst_path=str(dest))
            scan.tree("MLflow artifacts", dest)
        for v in client.search_model_versions(f"name = '{outcome.name}'"):
            scan.check("MLflow model version", v.version, f"{v.source} {v.tags} {v.description}")

        # 3. Prefect: the flow run with its parameters, its logs, its artifacts, its task runs.
        flow_run, logs, artifacts, tasks = prefect_records(flow_run_id)
        scan.check("Prefect flow run", "flow run", flow_run.model_dump_json())
        for log in logs:
            scan.check("Prefect logs", log.message[:80], log.message)
        for a in artifacts:
            scan.check("Prefect artifacts", a.key, a.model_dump_json())
        for t in tasks:
            scan.check("Prefect task runs", t.name, t.model_dump_json())

        # 3b. What the refused commands printed; the published manifests; every flow run's parameters in the Prefect
        # database; every log record of every flow run; every log file under the data dir.
        for i, text in enumerate(offered):
            scan.check("CLI output", f"refused spec {i}", text)
        for p in outcome.published:
            if p.uri.startswith("file://"):
                manifest = Path(p.uri.removeprefix("file://")) / "quantflow-manifest.json"
                scan.check("published manifest", p.uri, manifest.read_bytes())
        runs, all_logs = all_flow_runs_and_logs()
        for r in runs:
            scan.check("Prefect flow-run parameters", r.name, json.dumps(r.parameters, default=str))
        for log in all_logs:
            scan.check("Prefect logs (all runs)", log.name, log.message)
        for path in data_root.rglob("*.log"):
            scan.check("log files", str(path), path.read_bytes())

        # 4. The bucket: every object, its metadata.
        s3c = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1", aws_access_key_id=s3.access_key,
                               aws_secret_access_key=s3.secret_key)  # not the default session: it caches old keys
        for o in s3c.list_objects_v2(Bucket="qf-secrets")["Contents"]:
            obj = s3c.get_object(Bucket="qf-secrets", Key=o["Key"])
            scan.check("bucket objects", o["Key"], obj["Body"].read())
            scan.check("bucket metadata", o["Key"], repr(obj.get("Metadata")))
            if o["Key"].endswith("quantflow-manifest.json"):
                scan.check("published manifest", o["Key"], s3c.get_object(
                    Bucket="qf-secrets", Key=o["Key"])["Body"].read())

    assert scan.leaks == [], "\n".join(scan.leaks)
    probe = Scanner(scan.named)  # the scanner itself finds a secret where there is one: the server's identities file
    probe.tree("weed config", tmp_path / "weed")
    assert any(leak.startswith("AWS secret key in weed config") for leak in probe.leaks)
    # The scan read something everywhere it looked.
    for where in ("session data dir", "local store", "MLflow params/tags", "MLflow metric names", "MLflow artifacts",
                  "MLflow model version", "Prefect flow run", "Prefect logs", "Prefect artifacts", "Prefect task runs",
                  "bucket objects", "CLI output", "published manifest", "Prefect flow-run parameters",
                  "Prefect logs (all runs)", "log files"):
        assert scan.seen.get(where), f"nothing read in {where}"
    assert scan.seen["bucket objects"] >= 5 and scan.seen["Prefect logs"] >= 5, scan.seen
    assert scan.seen["published manifest"] >= 2 and scan.seen["CLI output"] == 5, scan.seen
    print({k: v for k, v in scan.seen.items()})
