"""MLflow: one experiment per base model, one run per variant with the baseline as a nested run."""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

from components.calibration import CalibSet
from components.evaluation.runner import EvalResult
from components.evaluation.serving import ServingResult, Speed
from components.gate import GateVerdict
from components.models import ModelRef
from components.recovery import RecoveryTable
from components.settings import settings
from components.stores.base import Published

PACKAGES = ["quantflow", "llmcompressor", "compressed-tensors", "transformers", "torch", "lm_eval", "prefect", "mlflow"]


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class TrackingError(RuntimeError):
    """MLflow could not record a variant; the message names the tracking URI (without credentials)."""


# Keys whose values are never logged, and environment variables whose values never leave the process through MLflow.
_SECRET_KEY_RE = re.compile(r"(token|secret|password|passwd|api[_-]?key|authorization|private[_-]?key)", re.I)
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PREFECT_API_KEY",
              "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_SECRET_ENV_RE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|SECRET_ACCESS_KEY)(_|$)", re.I)


def safe_uri(uri: str) -> str:
    """A URI without user:password@ and without query parameters (tokens travel there)."""
    return re.sub(r"(?<=://)[^/@?#]*@", "", uri).split("?", 1)[0].split("#", 1)[0]


def _secret_values() -> list[str]:
    names = set(SECRET_ENV) | {k for k in os.environ if _SECRET_ENV_RE.search(k)}
    return sorted({v for k in names if len(v := os.environ.get(k, "").strip()) >= 8}, key=len, reverse=True)


def scrub(text: str) -> str:
    """`text` with every secret held in the environment replaced by '***', and user:password@ dropped from URLs."""
    for value in _secret_values():
        text = text.replace(value, "***")
    return re.sub(r"(?<=://)[^/@\s:]+:[^/@\s]+@", "***@", text)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested params as dotted keys; values under secret-looking keys, and secrets from the environment, masked.

    Only what the caller passes is logged (specs carry no secrets by design); the environment never is.
    """
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif _SECRET_KEY_RE.search(str(k)) and v not in (None, "", [], ()):
            out[key] = "***"
        else:
            out[key] = scrub(json.dumps(v) if isinstance(v, (list, tuple)) else str(v))
    return out


def _experiment(mlflow, base: ModelRef) -> str:
    name = f"quantflow/{base.name}"
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None if settings().tracking_uri.startswith("http") else settings().path("mlartifacts").as_uri()
    # a model-development experiment: MLflow's UI opens its runs table, not the GenAI traces view
    return mlflow.create_experiment(name, artifact_location=artifacts,
                                    tags={"mlflow.experimentKind": "custom_model_development"})


def _metrics(mlflow, result: EvalResult) -> None:
    for task, s in result.scores.items():
        mlflow.log_metric(f"{task}.{s.metric}", s.value)
        if s.stderr is not None:
            mlflow.log_metric(f"{task}.{s.metric}_stderr", s.stderr)
    mlflow.log_metric("eval_wall_s", result.wall_s)


def _suite_dataset(result: EvalResult, suite_file: Path):
    """The eval suite as a metadata-only MLflow dataset: its file, its content digest."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow registers two sources for local paths and says so; either fits
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(suite_file))
    return MetaDataset(source, name=f"suite-{result.suite}", digest=result.suite_digest[:32])


def _metric_name(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _serving_metrics(mlflow, r: ServingResult) -> None:
    mlflow.log_metrics({"serving.output_tok_s": r.output_tok_s, "serving.ttft_median_ms": r.ttft_median_ms,
                        "serving.tpot_median_ms": r.tpot_median_ms, "serving.engine_peak_mb": r.engine_peak_mb,
                        "checkpoint_mb": r.checkpoint_mb, **({"serving.weights_gib": r.weights_gib} if r.weights_gib else {})})


def _recovery_artifacts(mlflow, table: RecoveryTable, name: str, verdict: GateVerdict) -> None:
    """recovery.json (the whole table), recovery_table.json (MLflow's table view) and recovery.png (bar chart)."""
    from components.comparison import chart, chart_row

    rows = table.rows
    mlflow.log_table({"task": [r.task for r in rows], "benchmark": [r.label for r in rows], "metric": [r.metric for r in rows],
                      "base": [r.base for r in rows], "base_stderr": [r.base_stderr for r in rows],
                      "quantized": [r.quant for r in rows], "quantized_stderr": [r.quant_stderr for r in rows],
                      "recovery": [r.recovery for r in rows], "recovery_ci_low": [r.ci_low for r in rows],
                      "recovery_ci_high": [r.ci_high for r in rows], "interval": [r.method for r in rows],
                      "verdict": [t.state.value for t in verdict.tasks]}, artifact_file="recovery_table.json")
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "recovery.json"
        p.write_text(table.model_dump_json(indent=2))
        mlflow.log_artifact(str(p))
        mlflow.log_artifact(str(chart([r.task for r in rows], [chart_row(name, table, verdict)], Path(tmp) / "recovery.png")))


def verdict_metrics(table: RecoveryTable, verdict: GateVerdict) -> dict[str, float]:
    """Recovery per task and on average with their interval bounds (percent), and gate_passed (1 only on PASSED)."""
    out = {}
    for key, value, low, high in [(f"{r.task}.recovery", r.recovery, r.ci_low, r.ci_high) for r in table.rows] + [
            ("average_recovery", table.average_recovery, table.average_ci_low, table.average_ci_high)]:
        if value is not None:
            out[key] = value
            if low is not None and high is not None:
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = low, high
    out["gate_passed"] = float(verdict.passed)
    return out


def verdict_tags(table: RecoveryTable, verdict: GateVerdict) -> dict[str, str]:
    """The verdict per task, what the average covers, and the average as it is always shown: with interval and state."""
    return {**{f"quantflow.verdict.{t.task}": t.state.value for t in verdict.tasks},
            "quantflow.average_covers": table.average_covers, "quantflow.average_recovery": average_text(table, verdict)}


def average_text(table: RecoveryTable, verdict: GateVerdict) -> str:
    """e.g. '99.40 [98.91, 99.86] over accuracy tasks, 2 of 3; gate PASSED' (never the number alone)."""
    if table.average_recovery is None:
        return f"n/a; gate {verdict.state.value}"
    bounds = "" if table.average_ci_low is None else f" [{table.average_ci_low:.2f}, {table.average_ci_high:.2f}]"
    return f"{table.average_recovery:.2f}{bounds} over {table.average_covers}; gate {verdict.state.value}"


def find_record(mlflow, experiment_id: str, record: str) -> str | None:
    """The finished run that already holds this record, if any."""
    runs = mlflow.search_runs([experiment_id], filter_string=f"tags.`quantflow.record` = '{record}' and attributes.status = 'FINISHED'",
                              output_format="list", max_results=1)
    return runs[0].info.run_id if runs else None


def log_variant(*, record: str, run_name: str, params: dict, base: ModelRef, calibration: CalibSet | None,
                base_eval: EvalResult, variant_eval: EvalResult, table: RecoveryTable, verdict: GateVerdict, published: list[Published], files: dict[str, Path],
                tags: dict[str, str], speed: Speed | None = None, suite_file: Path | None = None) -> str:
    """Record one finished variant once: `record` (a digest of everything recorded) makes reruns no-ops.

    A rerun after a failure (tracking server down, registration cut short) finds the finished run by its record and
    completes what is missing (the registered version), so a variant is recorded once and registered once.
    """
    uri = settings().tracking_uri
    try:
        return _log_variant(record=record, run_name=run_name, params=params, base=base, calibration=calibration,
                            base_eval=base_eval, variant_eval=variant_eval, table=table, verdict=verdict,
                            published=published, files=files, tags=tags, speed=speed, suite_file=suite_file)
    except Exception as e:  # noqa: BLE001 - every failure here is "MLflow could not record it"
        detail = scrub(str(e).strip().splitlines()[0][:300]) if str(e).strip() else ""
        raise TrackingError(
            f"MLflow tracking at {safe_uri(uri)} could not record {run_name!r} ({type(e).__name__}: {detail}). "
            "The checkpoint, its evaluations and its publication are kept (cached): rerun the flow once the tracking "
            "server answers, it records the run once (QUANTFLOW_MLFLOW_TRACKING_URI sets the server)") from e


def _log_variant(*, record: str, run_name: str, params: dict, base: ModelRef, calibration: CalibSet | None,
                 base_eval: EvalResult, variant_eval: EvalResult, table: RecoveryTable, verdict: GateVerdict,
                 published: list[Published], files: dict[str, Path], tags: dict[str, str], speed: Speed | None,
                 suite_file: Path | None) -> str:
    import mlflow

    mlflow.set_tracking_uri(settings().tracking_uri)
    experiment_id = _experiment(mlflow, base)
    tags = {k: scrub(str(v)) for k, v in {**tags, "quantflow.record": record, "quantflow.variant": run_name}.items()}
    existing = find_record(mlflow, experiment_id, record)
    if existing:
        register(existing, run_name, published, verdict, table, tags)
        return existing
    # The experiment names the base: the run is named by what sets it apart (quantized.w8a8, not a long shared prefix
    # the runs table cuts); the registered model keeps the full variant name.
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name.removeprefix(f"{base.name}-") or run_name,
                          tags=tags) as run:
        mlflow.log_params(flatten(params))
        mlflow.log_params({f"version.{k}": v for k, v in versions().items()})
        if calibration is not None:
            from datasets import load_from_disk

            ds = mlflow.data.from_huggingface(load_from_disk(calibration.path), path=calibration.path,
                                              name=f"calibration-{calibration.digest[:12]}", digest=calibration.digest[:32])
            mlflow.log_input(ds, context="calibration")
        if suite_file is not None:
            mlflow.log_input(_suite_dataset(variant_eval, suite_file), context="evaluation")
        _metrics(mlflow, variant_eval)
        mlflow.log_metrics(verdict_metrics(table, verdict))
        mlflow.set_tags(verdict_tags(table, verdict))
        mlflow.log_dict(verdict.model_dump(mode="json"), "gate.json")
        for name, path in files.items():
            if Path(path).is_dir():
                mlflow.log_artifacts(str(path), artifact_path=name)
            else:
                mlflow.log_artifact(str(path), artifact_path=name)
        _recovery_artifacts(mlflow, table, run_name, verdict)
        if speed is not None:
            _serving_metrics(mlflow, speed.variant)
            for row in speed.rows():
                if row.ratio is not None:
                    mlflow.log_metric(f"serving.gain.{_metric_name(row.label)}", row.ratio)
        baseline_tags = {"quantflow.role": "baseline"}
        if base_eval.reference:
            baseline_tags["quantflow.baseline_reference"] = base_eval.reference
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"baseline-{base.name}", nested=True,
                              tags=baseline_tags):
            mlflow.log_params({"model.source": base.source, "model.digest": base.digest, "suite": base_eval.suite,
                               "engine": base_eval.settings.engine, "measured": base_eval.reference is None})
            _metrics(mlflow, base_eval)
            if speed is not None:
                _serving_metrics(mlflow, speed.base)
        run_id = run.info.run_id
    register(run_id, run_name, published, verdict, table, tags)
    return run_id


def log_sweep(*, record: str, run_name: str, variant_runs: list[str], table_rows: dict[str, list], chart_png: Path,
              tags: dict[str, str]) -> str:
    """One parent run per sweep in the base's experiment; the variant runs are nested under it (their
    `mlflow.parentRunId`), and it holds the comparison (table view and chart). Idempotent by `record`."""
    import mlflow

    mlflow.set_tracking_uri(settings().tracking_uri)
    client = mlflow.MlflowClient(settings().tracking_uri)
    experiment_id = client.get_run(variant_runs[0]).info.experiment_id
    tags = {k: scrub(str(v)) for k, v in {**tags, "quantflow.role": "sweep", "quantflow.record": record}.items()}
    parent = find_record(mlflow, experiment_id, record)
    if parent is None:
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            mlflow.log_table(table_rows, artifact_file="comparison_table.json")
            mlflow.log_artifact(str(chart_png))
            parent = run.info.run_id
    for run_id in variant_runs:
        client.set_tag(run_id, "mlflow.parentRunId", parent)
    return parent


def run_url(run_id: str) -> str | None:
    """The run's page in the MLflow UI, when tracking goes to a server."""
    uri = settings().tracking_uri
    if not uri.startswith("http"):
        return None
    import mlflow

    experiment = mlflow.get_run(run_id).info.experiment_id
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def register(run_id: str, name: str, published: list[Published], verdict: GateVerdict, table: RecoveryTable,
             tags: dict[str, str]) -> None:
    """A registered model version per published variant; alias `candidate` only on PASSED (not INCONCLUSIVE).

    Its source is the first remote store's URI (s3://, https://); a local-only publication points at the run's
    card artifact instead, since the registry accepts local paths only inside the run's artifacts.
    """
    from mlflow import MlflowClient

    if not published:
        return
    client = MlflowClient(settings().tracking_uri)
    if client.search_registered_models(filter_string=f"name = '{name}'") == []:
        client.create_registered_model(name, tags={"quantflow.scheme": tags.get("quantflow.scheme", "")})
    done = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if done:  # registered by an earlier attempt: only make sure the alias follows the verdict
        if verdict.passed:
            client.set_registered_model_alias(name, "candidate", done[0].version)
        return
    version_tags = {**tags, "quantflow.gate": verdict.state.value.lower(), **verdict_tags(table, verdict)}
    version_tags.update({f"quantflow.uri.{p.store}": p.uri for p in published})
    version_tags.update({f"quantflow.revision.{p.store}": p.revision for p in published if p.revision})
    remote = [p.uri for p in published if not p.uri.startswith("file:")]
    source = remote[0] if remote else f"{client.get_run(run_id).info.artifact_uri}/card"
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=version_tags)
    if verdict.passed:
        client.set_registered_model_alias(name, "candidate", mv.version)
