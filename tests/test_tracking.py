"""What quantflow records in MLflow, without the flow: the experiment's headline view, finite metrics only, the card as
MLflow shows it, a record digest of content alone (against the session's MLflow server)."""
from __future__ import annotations

import json
import math
import os
import uuid

import mlflow
import pytest

from components import tracking
from components.models import ModelRef
from components.settings import settings
from records import CARD, variant_record

HEADLINE = ["tags.`quantflow.gate`", "metrics.`average_recovery`", "metrics.`average_recovery_ci_low`",
            "metrics.`average_recovery_ci_high`", "metrics.`checkpoint_mb`", "metrics.`compression`",
            "metrics.`serving.output_tok_s`"]
TASKS = ["tags.`qf_facts.verdict`", "tags.`qf_arith.verdict`", "tags.`qf_prose.verdict`"]  # the smoke suite's


def _columns(experiment_id: str) -> list[str]:
    """The shared view's columns, checked to be drawn in that order and each wide enough for its name."""
    view = json.loads(mlflow.MlflowClient().get_experiment(experiment_id).tags["mlflow.sharedViewState.quantflow"])
    assert view["columnOrder"] == view["selectedColumns"] and set(view["columnWidths"]) == set(view["selectedColumns"])
    assert all(width >= 6 * len(column.split("`")[1]) + 16 for column, width in view["columnWidths"].items())
    return view["selectedColumns"]


def test_the_experiment_opens_on_the_headline_columns():
    """Created or found (made before the view existed), the base's experiment holds the shared view; the URL opens it."""
    mlflow.set_tracking_uri(settings().tracking_uri)
    name = f"tiny-view-{uuid.uuid4().hex[:8]}"
    base = ModelRef(source=f"local/{name}", name=name, path="/nowhere", digest="d" * 64)
    made = tracking._experiment(mlflow, base)
    assert _columns(made) == HEADLINE
    assert tracking._experiment(mlflow, base) == made and _columns(made) == HEADLINE
    # a suite's tasks join the view and stay when a variant of another suite is recorded
    tracking._experiment(mlflow, base, ["a", "b"])
    tracking._experiment(mlflow, base, ["b", "c"])
    assert _columns(made) == HEADLINE[:-1] + [f"tags.`{t}.verdict`" for t in "abc"] + HEADLINE[-1:]
    assert tracking.experiment_url(name) == f"{settings().tracking_uri.rstrip('/')}/#/experiments/{made}/runs" \
                                            "?viewStateShareKey=quantflow&workflowType=machine_learning"

    older = mlflow.create_experiment(f"quantflow/{name}-older")
    assert tracking._experiment(mlflow, base.model_copy(update={"name": f"{name}-older"})) == older
    assert _columns(older) == HEADLINE
    assert tracking.experiment_url("no-such-base") is None


def test_the_shared_view_compares_variants_at_a_glance(tmp_path):
    """Two variants of one base: headline numbers as a person reads them (2 decimals), size and compression without
    serving, each task's recovery beside its verdict, the gate in words (INCONCLUSIVE is not FAILED), and a colour
    of its own per variant; the view shows the tasks' columns."""
    from components.digests import FileStamp

    base = f"tiny-glance-{uuid.uuid4().hex[:8]}"
    client = mlflow.MlflowClient(settings().tracking_uri)
    runs = []
    for i, (name, values) in enumerate([("w8a8", (0.78, 0.27, 21.0)), ("w4a16", (0.79, 0.30, 20.2))]):
        (tmp_path / name).mkdir()
        record = variant_record(tmp_path / name, base, f"{base}-{name}", values=values, speed=False)
        weights = lambda size: [FileStamp(path="model.safetensors", size=size, mtime_ns=0, sha256="0" * 64)]  # noqa: E731
        record = record.model_copy(update={
            "checkpoint": record.checkpoint.model_copy(update={"files": weights((3 - i) * 2**20)}),
            "base": record.base.model_copy(update={"files": weights(6 * 2**20)})})
        run = client.get_run(tracking.log_variant(record))
        runs.append(run)
        m, tags = run.data.metrics, run.data.tags
        assert all(round(v, 2) == v for k, v in m.items() if "recovery" in k), m
        assert m["average_recovery"] == round(record.table.average_recovery, 2)
        assert m["checkpoint_mb"] == 3 - i and m["compression"] == round(6 / (3 - i), 2)
        assert tags["quantflow.gate"] == record.gate.state.value
        for row, task in zip(record.table.rows, record.gate.tasks, strict=True):
            assert tags[f"{row.task}.verdict"] == f"{row.recovery:.2f} {task.state.value}"
    assert runs[0].data.tags["quantflow.gate"] == "INCONCLUSIVE"  # not "failed", and gate_passed 0 for both
    assert len({r.data.tags["mlflow.runColor"] for r in runs}) == 2
    assert _columns(runs[0].info.experiment_id) == HEADLINE[:-1] + TASKS + HEADLINE[-1:]


def test_non_finite_metrics_are_never_logged():
    class Recorder:
        logged: dict = {}

        def log_metrics(self, metrics):
            self.logged.update(metrics)

    mlflow_ = Recorder()
    tracking._log_metrics(mlflow_, {"a.acc": 0.5, "a.acc_stderr": math.nan, "b.recovery": math.inf,
                                    "b.recovery_ci_low": -math.inf, "serving.weights_gib": None, "gate_passed": 0.0})
    assert mlflow_.logged == {"a.acc": 0.5, "gate_passed": 0.0}


def test_a_nan_score_leaves_no_metric(tmp_path):
    """An evaluation whose score is NaN (lm-eval's stderr of a constant task, a failed parse): the run has no such metric."""
    record = variant_record(tmp_path, f"tiny-nan-{uuid.uuid4().hex[:8]}", "tiny-nan-w8a8", values=(0.78, math.nan, 21.0))
    run = mlflow.MlflowClient(settings().tracking_uri).get_run(tracking.log_variant(record))
    assert run.data.metrics and all(math.isfinite(v) for v in run.data.metrics.values())
    assert "qf_facts.acc" in run.data.metrics and "qf_arith.exact_match" not in run.data.metrics, \
        sorted(run.data.metrics)


def test_the_mlflow_card_shows_its_front_matter_as_a_yaml_block():
    shown = tracking.readable_card(CARD)
    assert shown.startswith("```yaml\nbase_model: local/tiny\ntags:\n- quantflow\n```\n\n# tiny-w8a8\n")
    assert tracking.readable_card("# no front matter\n---\n") == "# no front matter\n---\n"


def test_the_record_digest_is_of_content_only(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    record = variant_record(tmp_path / "a", "tiny", "tiny-w8a8")
    elsewhere = variant_record(tmp_path / "b", "tiny", "tiny-w8a8").model_copy(update={"flow_run_id": "other"})
    assert record.digest == elsewhere.digest and record.digest.startswith("record-")
    assert variant_record(tmp_path / "a", "tiny", "tiny-w8a8", values=(0.7, 0.27, 21.0)).digest != record.digest
    assert variant_record(tmp_path / "a", "tiny", "tiny-w8a8", speed=False).digest != record.digest


def test_compare_prints_the_link_to_the_headline_view(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    base = f"tiny-cmp-{uuid.uuid4().hex[:8]}"
    tracking.log_variant(variant_record(tmp_path, base, f"{base}-w8a8"))
    result = CliRunner().invoke(app, ["compare", base])
    assert result.exit_code == 0, result.output
    assert f"| {base}-w8a8 | w8a8-int8 |" in result.output
    assert result.output.rstrip().endswith(tracking.experiment_url(base)), result.output


def test_a_calibration_set_is_recorded_as_a_dataset_without_flooding_the_log(tmp_path):
    """MLflow cannot infer a schema for token-id lists and would log the rows it failed on: the calibration set is
    recorded (name, digest) and that warning is not printed."""
    import logging

    from datasets import Dataset

    from components.calibration import CalibSet

    Dataset.from_dict({"input_ids": [[1, 2, 3]] * 4, "attention_mask": [[1, 1, 1]] * 4}).save_to_disk(tmp_path / "calib")
    calib = CalibSet(path=str(tmp_path / "calib"), digest="e" * 64, num_samples=4, max_seq_length=3, num_tokens=12,
                     description="4 random-token sequences of length 3")
    record = variant_record(tmp_path, f"tiny-calib-{uuid.uuid4().hex[:8]}", "tiny-calib-w8a8")
    record = record.model_copy(update={"calibration": calib})
    warned = []
    handler = logging.Handler()
    handler.emit = warned.append
    logger = logging.getLogger("mlflow.data.huggingface_dataset")
    logger.addHandler(handler)
    try:
        run = mlflow.MlflowClient(settings().tracking_uri).get_run(tracking.log_variant(record))
    finally:
        logger.removeHandler(handler)
    assert [i.dataset.name for i in run.inputs.dataset_inputs if i.dataset.name.startswith("calibration")] == \
        ["calibration-eeeeeeeeeeee"]
    assert not [r.getMessage()[:200] for r in warned if r.levelno >= logging.WARNING]


# A child process asks for a variant that is already recorded: it must get the run without importing mlflow.
_RECALL = """
import json, sys
from components import tracking
from components.outcomes import VariantRecord
run = tracking.log_variant(VariantRecord.model_validate_json(sys.stdin.read()))
print(json.dumps([run, "mlflow" in sys.modules]))
"""


@pytest.mark.parametrize("where", ["sqlite", "server"])
def test_a_recorded_variant_is_answered_from_its_stamp_only_while_mlflow_holds_it(tmp_path, monkeypatch, where):
    """A rerun's MLflow step: the stamp answers while the run, its registered version and the candidate alias are as
    they were left (checked through MLflow's REST API or its SQLite tables); once any of them is gone, mlflow's own
    path records or registers again."""
    import subprocess
    import sys

    from components import recorded
    from components.stores.base import Published

    monkeypatch.setenv("QUANTFLOW_HOME", str(tmp_path / "home"))
    if where == "sqlite":
        monkeypatch.delenv("QUANTFLOW_MLFLOW_TRACKING_URI", raising=False)
    settings.cache_clear()
    try:
        uri = settings().tracking_uri
        assert uri.startswith("sqlite:///" if where == "sqlite" else "http://")
        base = f"tiny-stamp-{uuid.uuid4().hex[:8]}"
        record = variant_record(tmp_path, base, f"{base}-w8a8").model_copy(update={"published": [Published(
            store="local", uri=f"file://{tmp_path}/published", manifest_digest="a" * 64, files=3, bytes=10)]})
        client = mlflow.MlflowClient(uri)
        run_id = tracking.log_variant(record)
        [version] = client.search_model_versions(f"name = '{record.name}'")

        child = subprocess.run([sys.executable, "-c", _RECALL], input=record.model_dump_json(), capture_output=True,
                               text=True, cwd=tracking.Path(__file__).parents[1], env=dict(os.environ), timeout=120)
        assert child.returncode == 0, child.stderr[-2000:]
        assert json.loads(child.stdout.splitlines()[-1]) == [run_id, False]

        [stamp_file] = (tmp_path / "home" / "tracked").iterdir()
        stamp = recorded.Recorded.model_validate_json(stamp_file.read_text())
        assert (stamp.run_id, stamp.model, stamp.version, stamp.candidate) == (run_id, record.name, str(version.version), False)
        held = recorded._held_sqlite if where == "sqlite" else recorded._held_rest
        assert held(uri, stamp, record.digest) and not held(uri, stamp, "record-other")
        candidate = stamp.model_copy(update={"candidate": True})
        assert not held(uri, candidate, record.digest)  # no alias yet
        client.set_registered_model_alias(record.name, "candidate", version.version)
        assert held(uri, candidate, record.digest)

        client.delete_model_version(record.name, version.version)  # registration undone: registered again
        assert not held(uri, stamp, record.digest)
        assert tracking.log_variant(record) == run_id
        [again] = client.search_model_versions(f"name = '{record.name}'")
        assert again.run_id == run_id and again.version != version.version

        client.delete_run(run_id)  # the run deleted: recorded again
        assert tracking.log_variant(record) not in (run_id, None)
    finally:
        settings.cache_clear()


def test_a_dead_tracking_server_fails_in_seconds_naming_it(tmp_path, monkeypatch):
    """A tracking server that is gone (here: a port nobody listens on) fails the MLflow step within seconds with its
    URL, not after MLflow's own ~4 min of retries (7, backoff factor 2); the HTTP settings are ours unless set."""
    import time

    from servers import free_ports

    [port] = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("QUANTFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QUANTFLOW_MLFLOW_TRACKING_URI", url)
    settings.cache_clear()
    try:
        record = variant_record(tmp_path, "tiny-dead", "tiny-dead-w8a8")
        start = time.monotonic()
        with pytest.raises(tracking.TrackingError) as ei:
            tracking.log_variant(record)
        took = time.monotonic() - start
    finally:
        settings.cache_clear()
    assert f"MLflow tracking at {url} could not record 'tiny-dead-w8a8'" in str(ei.value), ei.value
    assert took < 60, f"{took:.0f} s before the failure"
