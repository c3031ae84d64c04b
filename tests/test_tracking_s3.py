"""MLflow as the production set-up runs it: a tracking server whose artifacts go to S3 (SeaweedFS), clients without
storage credentials. A variant recorded through quantflow's tracking lands in the bucket: card, recipe, recovery
table (MLflow table view), chart PNG; the suite is a dataset input; serving figures are metrics; no secret leaks."""
from __future__ import annotations

import json

import boto3
import pytest

from components import tracking
from components.evaluation.results import DocScores, TaskScore
from components.gate import gate
from components.local_stack import mlflow_server, stop
from components.recovery import table
from components.settings import settings
from records import CARD, variant_record
from servers import seaweed_s3

BUCKET = "mlflow-artifacts"


@pytest.fixture
def server_with_s3_artifacts(tmp_path, monkeypatch):
    with seaweed_s3(root=tmp_path / "s3", buckets=(BUCKET,)) as s3:
        creds = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                 "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url}
        (tmp_path / "mlflow").mkdir()
        proc, url = mlflow_server(tmp_path / "mlflow", artifacts=f"s3://{BUCKET}/runs", env=creds)
        # The client (this process) holds no storage credentials: artifacts go through the server.
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_S3_ENDPOINT_URL"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("QUANTFLOW_MLFLOW_TRACKING_URI", url)
        settings.cache_clear()
        try:
            yield s3, url
        finally:
            stop(proc)
            settings.cache_clear()


def test_a_variant_lands_in_the_bucket_through_the_server(server_with_s3_artifacts, tmp_path):
    import mlflow

    s3, url = server_with_s3_artifacts
    record = variant_record(tmp_path, "tiny-s3", "tiny-s3-w8a8")
    base_eval, t = record.base_eval, record.table
    run_id = tracking.log_variant(record)

    client = boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key, region_name="us-east-1")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]}
    run = mlflow.MlflowClient(url).get_run(run_id)
    prefix = f"runs/{run.info.experiment_id}/{run_id}/artifacts/"
    assert {prefix + k for k in ("card/README.md", "recipe/recipe.yaml", "recovery.json", "recovery_table.json",
                                 "recovery.png", "gate.json", "lm_eval/results.json")} <= keys
    png = client.get_object(Bucket=BUCKET, Key=prefix + "recovery.png")["Body"].read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    view = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + "recovery_table.json")["Body"].read())
    assert view["columns"][:3] == ["task", "benchmark", "metric"] and [r[0] for r in view["data"]] == list(base_eval.scores)

    # the verdict as the card states it: interval bounds beside every recovery, states and coverage as tags
    m, tags = run.data.metrics, run.data.tags
    assert m["average_recovery_ci_low"] <= m["average_recovery"] <= m["average_recovery_ci_high"]
    assert m["qf_facts.recovery_ci_low"] <= m["qf_facts.recovery"] <= m["qf_facts.recovery_ci_high"]
    assert tags["quantflow.average_covers"] == "accuracy tasks, 2 of 3"
    assert tags["quantflow.verdict.qf_prose"] == gate(t).tasks[2].state.value
    assert tags["quantflow.average_recovery"].endswith(f"over accuracy tasks, 2 of 3; gate {gate(t).state.value}")
    assert view["columns"][-4:] == ["recovery_ci_low", "recovery_ci_high", "interval", "verdict"]

    [suite_input] = [d for d in run.inputs.dataset_inputs if d.dataset.name == "suite-smoke"]
    assert suite_input.dataset.digest == "f" * 32 and suite_input.tags[0].value == "evaluation"
    assert run.data.metrics["serving.output_tok_s"] == 100.0 and run.data.metrics["checkpoint_mb"] == 140.0
    assert run.data.metrics["serving.gain.output_throughput"] == pytest.approx(1.25)
    [baseline] = mlflow.MlflowClient(url).search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert baseline.data.metrics["serving.output_tok_s"] == 80.0 and baseline.data.params["measured"] == "True"

    recorded = json.dumps({**run.data.params, **run.data.tags, **baseline.data.params, **baseline.data.tags})
    assert s3.secret_key not in recorded and s3.access_key not in recorded
    # MLflow's copy of the card reads as markdown: its front matter a yaml block (the published card keeps it as is)
    shown = client.get_object(Bucket=BUCKET, Key=prefix + "card/README.md")["Body"].read().decode()
    assert shown == CARD.replace("---\n", "```yaml\n", 1).replace("---\n", "```\n", 1)
    assert (tmp_path / "README.md").read_text() == CARD
    moved = record.model_copy(update={"checkpoint": record.checkpoint.model_copy(update={"path": str(tmp_path / "elsewhere")}),
                                      "flow_run_id": "another run"})
    assert tracking.log_variant(moved) == run_id  # the same content again: the same run, nothing new


@pytest.mark.parametrize("n,right,lost,state", [(400, 240, 4, "PASSED"), (100, 60, 3, "INCONCLUSIVE"), (400, 240, 30, "FAILED")])
def test_candidate_alias_only_on_passed(n, right, lost, state, tmp_path):
    """The registry's `candidate` alias follows the three-state verdict: PASSED only, never INCONCLUSIVE."""
    import uuid

    import mlflow

    from components.stores.base import Published

    docs = [1.0] * right + [0.0] * (n - right)
    quant = [0.0] * lost + docs[lost:]
    scores = [{"qf_facts": TaskScore(task="qf_facts", label="Facts", metric="acc", value=sum(v) / n, stderr=None,
                                     higher_is_better=True, n=n, samples=DocScores(ids=[f"f/{i}" for i in range(n)], values=v))}
              for v in (docs, quant)]
    t = table(*scores)
    verdict = gate(t)
    name = f"tiny-alias-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(settings().tracking_uri)
    with mlflow.start_run(run_name=name) as run:
        pass
    pub = Published(store="s3", uri=f"s3://bucket/{name}", manifest_digest="m", files=1, bytes=1)
    tracking.register(run.info.run_id, name, [pub], verdict, t, {"quantflow.scheme": "w8a8-int8"})
    client = mlflow.MlflowClient(settings().tracking_uri)
    [version] = client.search_model_versions(f"name = '{name}'")
    assert version.tags["quantflow.gate"] == verdict.state.value
    assert version.tags["quantflow.average_recovery"].endswith(f"gate {verdict.state.value}")
    assert verdict.state.value == state
    assert ("candidate" in client.get_registered_model(name).aliases) is (state == "PASSED")
