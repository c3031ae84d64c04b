"""MLflow: one experiment per base model, one run per variant with the baseline as a nested run."""
from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import re
import tempfile
import warnings
from pathlib import Path

from components import recorded
from components.evaluation.runner import EvalResult
from components.evaluation.serving import WEIGHT_SUFFIXES, ServingResult, checkpoint_mb
from components.gate import GateVerdict
from components.models import ModelRef
from components.outcomes import Checkpoint, VariantRecord
from components.recovery import RecoveryTable
from components.settings import settings
from components.redaction import safe_uri, scrub
from components.stores.base import Published

# MLflow's client retries a server that does not answer for ~4 minutes (7 retries, backoff factor 2, 120 s per request):
# a tracking server that dies mid-run fails our calls in seconds instead (a refused connection: 3 tries, 1 + 2 s apart;
# a server that hangs: at most 3 x 10 s + 3 s), then TrackingError names the URL. mlflow reads these per request; what
# the environment sets wins.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
for _name, _value in HTTP_SETTINGS.items():
    os.environ.setdefault(_name, _value)

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


def run_params(r: VariantRecord) -> dict:
    """The run's params, nested (`flatten` makes them MLflow's dotted keys): the spec, the digests, the engine, and
    the versions of the libraries that made and measured the variant (the card's)."""
    return {"spec": r.spec.model_dump(mode="json"), "scheme.digest": r.scheme.digest, "base.digest": r.base.digest,
            "checkpoint.digest": r.checkpoint.digest, "engine": r.variant_eval.settings.model_dump(), "version": r.versions}


def run_tags(r: VariantRecord) -> dict[str, str]:
    """The run's own tags; the gate's per task and the average's are `gate_tags`. `quantflow.record` finds it again."""
    return {"quantflow.scheme": r.scheme.name, "quantflow.gate": r.gate.state.value,
            "quantflow.prefect_flow_run_id": r.flow_run_id, "quantflow.prefect_flow_run_url": r.flow_run_url,
            "quantflow.record": r.digest, "quantflow.variant": r.name}


def run_files(r: VariantRecord) -> dict[str, Path]:
    """Artifact folder -> file or folder logged there as it is (the card is logged apart, see `readable_card`)."""
    return {"recipe": Path(r.checkpoint.path) / "recipe.yaml", "lm_eval": Path(r.variant_eval.output_dir)}


# Keys whose values are never logged, and environment variables whose values never leave the process through MLflow.
_SECRET_KEY_RE = re.compile(r"(token|secret|password|passwd|api[_-]?key|authorization|private[_-]?key)", re.I)
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


# What this process learnt from recording variants: run id and experiment name -> experiment id (for the UI links)
_experiments: dict[str, str] = {}
VIEW = "quantflow"  # the shared view of every base's experiment: `experiment_url` opens it
VIEW_TAG = f"mlflow.sharedViewState.{VIEW}"
HEADLINE = [("tags", "quantflow.gate"), ("metrics", "average_recovery"), ("metrics", "average_recovery_ci_low"),
            ("metrics", "average_recovery_ci_high"), ("metrics", "checkpoint_mb"), ("metrics", "compression")]
TRAILING = [("metrics", "serving.output_tok_s")]
TASK_TAG = "{task}.verdict"  # per task: its recovery and verdict in one cell, e.g. "97.50 PASSED"
# One colour per variant in the runs table and its charts (MLflow's `mlflow.runColor` run tag, which its UI reads and
# sets): the first variant of a base gets the first, a rerun of a name keeps its colour.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


# The view's charts, in the shape MLflow 3.17's UI writes when a user adds them and saves the view: `compareRunCharts`
# cards, each drawn in the `compareRunSections` section its `metricSectionId` names (ids need only be unique; titles
# are the metrics' names). A bar chart of one metric draws each run in its colour (`mlflow.runColor`; several metrics
# in one bar chart are coloured by metric) and no chart type draws an interval: the average stands between its bounds,
# a bar each, low to high.
SECTION = "quantflow-variants"
CHARTS = [*({"uuid": f"quantflow-{key}", "type": "BAR", "runsCountToCompare": 10, "metricSectionId": SECTION,
             "deleted": False, "isGenerated": False, "metricKey": key}
            for key in ("average_recovery_ci_low", "average_recovery", "average_recovery_ci_high")),
          {"uuid": "quantflow-size-vs-recovery", "type": "SCATTER", "runsCountToCompare": 100, "metricSectionId": SECTION,
           "deleted": False, "isGenerated": False,
           "xaxis": {"key": "checkpoint_mb", "type": "METRIC"}, "yaxis": {"key": "average_recovery", "type": "METRIC"}}]
# Ours first: MLflow sorts named sections before its own two, which it fills with a chart per other metric. Three
# cards a row, 250 px high: both rows in view at 1440 x 900 beside the runs list.
SECTIONS = [{"uuid": SECTION, "name": "Variants: recovery and size", "display": True, "isReordered": False,
             "deleted": False, "isGenerated": False, "columns": 3, "cardHeight": 250},
            *({"uuid": f"quantflow-{name.split()[0].lower()}", "name": name, "display": True, "isReordered": False,
               "deleted": False, "isGenerated": True} for name in ("Model metrics", "System metrics"))]


def view_state(tasks: list[str] = ()) -> str:
    """The shared view as MLflow's UI reads it (`mlflow.sharedViewState.<key>`, plain JSON): the runs table's columns
    (the gate, the average with its interval, size and compression, then each task's recovery and verdict, in this order,
    not alphabetical: low before high, each wide enough to read its name; a column no run has logged is not drawn) and
    its charts (`compareRunsMode=CHART` opens them): the average recovery between its interval's bounds and size
    against recovery, each variant in its colour."""
    names = HEADLINE + [("tags", TASK_TAG.format(task=t)) for t in tasks] + TRAILING
    columns = [f"{kind}.`{name}`" for kind, name in names]
    # ~6.2 px a character in the headers' font, ~7.5 in the cells': a gate cell holds up to "NOT COMPARABLE", a
    # task's "90.00 INCONCLUSIVE"; numbers are short
    cell = {"quantflow.gate": 14, **{TASK_TAG.format(task=t): 18 for t in tasks}}
    return json.dumps({"selectedColumns": columns, "columnOrder": columns,
                       "columnWidths": {c: int(20 + max(6.2 * len(name), 7.5 * cell.get(name, 0)))
                                        for c, (_, name) in zip(columns, names, strict=True)},
                       "compareRunCharts": CHARTS, "compareRunSections": SECTIONS})


def _view_tasks(view: str | None) -> list[str]:
    """The tasks a shared view already shows (variants of other suites), so one base's view keeps them all."""
    try:
        columns = json.loads(view)["selectedColumns"] if view else []
    except (ValueError, KeyError, TypeError):
        return []
    suffix = TASK_TAG.format(task="")
    return [c[len("tags.`"):-len(suffix) - 1] for c in columns if c.startswith("tags.`") and c.endswith(f"{suffix}`")]


def _experiment(mlflow, base: ModelRef, tasks: list[str] = ()) -> str:
    """The base's experiment, with the headline view set on it each time (an experiment made before it gets it), its
    task columns those of every suite recorded on it."""
    name = f"quantflow/{base.name}"
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        shown = _view_tasks(exp.tags.get(VIEW_TAG))
        view = view_state(shown + [t for t in tasks if t not in shown])
        if exp.tags.get(VIEW_TAG) != view:
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, VIEW_TAG, view)
        return exp.experiment_id
    view = view_state(list(tasks))
    # files under the home wherever the store is the home's (no server, or the stack's server on it): the experiment
    # stays writable whether or not the stack runs (an mlflow-artifacts:/ location needs the server)
    stack = settings().stack()
    local = not settings().tracking_uri.startswith("http") or (stack and settings().tracking_uri == stack.mlflow_url)
    artifacts = settings().path("mlartifacts").as_uri() if local else None
    # a model-development experiment: MLflow's UI opens its runs table, not the GenAI traces view
    return mlflow.create_experiment(name, artifact_location=artifacts,
                                    tags={"mlflow.experimentKind": "custom_model_development", VIEW_TAG: view})


def _log_metrics(mlflow, metrics: dict[str, float | None]) -> None:
    """Every metric goes through here: None, NaN and inf are left out (MLflow would store NaN as a number and chart,
    sort and compare on it; a missing value is honest)."""
    mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None and math.isfinite(v)})


def _eval_metrics(result: EvalResult) -> dict[str, float | None]:
    return {**{f"{task}.{s.metric}": s.value for task, s in result.scores.items()},
            **{f"{task}.{s.metric}_stderr": s.stderr for task, s in result.scores.items()}, "eval_wall_s": result.wall_s}


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


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


def _serving_metrics(r: ServingResult) -> dict[str, float | None]:
    """Speeds, times and sizes to the tenth a person reads (the exact ones are in the card's serving table's source)."""
    return {"serving.output_tok_s": _round(r.output_tok_s, 1), "serving.ttft_median_ms": _round(r.ttft_median_ms, 1),
            "serving.tpot_median_ms": _round(r.tpot_median_ms, 1), "serving.engine_peak_mb": _round(r.engine_peak_mb, 1),
            "checkpoint_mb": _round(r.checkpoint_mb, 1), "serving.weights_gib": _round(r.weights_gib or None, 2)}


def _colour(mlflow, experiment_id: str, name: str) -> str:
    """The variant's colour in the base's runs table and charts: the one its name had before, else the next free."""
    taken = {}
    for run in sorted(mlflow.search_runs([experiment_id], output_format="list"), key=lambda x: x.info.start_time or 0):
        variant, colour = run.data.tags.get("quantflow.variant"), run.data.tags.get("mlflow.runColor")
        if variant and colour:
            taken.setdefault(variant, colour)
    if name in taken:
        return taken[name]
    free = [c for c in PALETTE if c not in taken.values()]
    return free[0] if free else PALETTE[len(taken) % len(PALETTE)]


def readable_card(card: str) -> str:
    """The card as MLflow's markdown viewer shows it well: its YAML front matter as a fenced yaml block (left as front
    matter, it renders as one run-on paragraph). Only MLflow's copy: the published card keeps its front matter."""
    m = re.match(r"---\n(.*?\n)---\n", card, re.S)
    return f"```yaml\n{m[1]}```\n{card[m.end():]}" if m else card


def _recovery_artifacts(mlflow, table: RecoveryTable, name: str, gate: GateVerdict) -> None:
    """recovery.json (the whole table), recovery_table.json (MLflow's table view) and recovery.png (bar chart)."""
    from components.comparison import chart, chart_row

    rows = table.rows
    mlflow.log_table({"task": [r.task for r in rows], "benchmark": [r.label for r in rows], "metric": [r.metric for r in rows],
                      "base": [r.base for r in rows], "base_stderr": [r.base_stderr for r in rows],
                      "quantized": [r.quant for r in rows], "quantized_stderr": [r.quant_stderr for r in rows],
                      "recovery": [r.recovery for r in rows], "recovery_ci_low": [r.ci_low for r in rows],
                      "recovery_ci_high": [r.ci_high for r in rows], "interval": [r.method for r in rows],
                      "verdict": [t.state.value for t in gate.tasks]}, artifact_file="recovery_table.json")
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "recovery.json"
        p.write_text(table.model_dump_json(indent=2))
        mlflow.log_artifact(str(p))
        mlflow.log_artifact(str(chart([r.task for r in rows], [chart_row(name, table, gate)], Path(tmp) / "recovery.png")))


def gate_metrics(table: RecoveryTable, gate: GateVerdict) -> dict[str, float]:
    """Recovery per task and on average with their interval bounds (percent, to the 2 decimals the cards print: the
    runs table shows what it is given, and the exact values are in recovery.json), and gate_passed (1 only on
    PASSED; the tag `quantflow.gate` tells FAILED from INCONCLUSIVE)."""
    out = {}
    for key, value, low, high in [(f"{r.task}.recovery", r.recovery, r.ci_low, r.ci_high) for r in table.rows] + [
            ("average_recovery", table.average_recovery, table.average_ci_low, table.average_ci_high)]:
        if value is not None:
            out[key] = round(value, 2)
            if low is not None and high is not None:
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = round(low, 2), round(high, 2)
    out["gate_passed"] = float(gate.passed)
    return out


def size_metrics(checkpoint: Checkpoint, base: ModelRef) -> dict[str, float | None]:
    """checkpoint_mb (MiB of weight files, as serving counts them) and compression (base weights / variant weights),
    from the files each was checked against, or the disk where they were not listed; logged whether or not serving ran."""
    def mib(files, path) -> float:
        listed = [f.size for f in files if f.path.endswith(WEIGHT_SUFFIXES)]
        return sum(listed) / 2**20 if listed else checkpoint_mb(path)

    variant, original = mib(checkpoint.files, checkpoint.path), mib(base.files, base.path)
    return {"checkpoint_mb": round(variant, 1) if variant else None,
            "compression": round(original / variant, 2) if variant and original else None}


def gate_tags(table: RecoveryTable, gate: GateVerdict) -> dict[str, str]:
    """The verdict per task, what the average covers, and the average as it is always shown: with interval and state;
    and per task its recovery beside its verdict (the view's task columns)."""
    recovery = {r.task: r.recovery for r in table.rows}
    cells = {TASK_TAG.format(task=t.task): (f"{recovery[t.task]:.2f} " if recovery.get(t.task) is not None else "")
             + t.state.value for t in gate.tasks}
    return {**{f"quantflow.verdict.{t.task}": t.state.value for t in gate.tasks}, **cells,
            "quantflow.average_covers": table.average_covers, "quantflow.average_recovery": average_text(table, gate)}


def average_text(table: RecoveryTable, gate: GateVerdict) -> str:
    """e.g. '99.40 [98.91, 99.86] over accuracy tasks, 2 of 3; gate PASSED' (never the number alone)."""
    if table.average_recovery is None:
        return f"n/a; gate {gate.state.value}"
    bounds = "" if table.average_ci_low is None else f" [{table.average_ci_low:.2f}, {table.average_ci_high:.2f}]"
    return f"{table.average_recovery:.2f}{bounds} over {table.average_covers}; gate {gate.state.value}"


def find_record(mlflow, experiment_id: str, record: str) -> str | None:
    """The finished run that already holds this record, if any."""
    runs = mlflow.search_runs([experiment_id], output_format="list", max_results=1,
                              filter_string=f"tags.`quantflow.record` = '{record}' and attributes.status = 'FINISHED'")
    return runs[0].info.run_id if runs else None


def log_variant(record: VariantRecord) -> str:
    """Record one finished variant once: its digest makes reruns no-ops.

    A rerun whose variant MLflow still holds as it was left is answered from its stamp, checked against MLflow without
    importing mlflow (components/recorded.py). Otherwise mlflow finds the finished run by its record and completes
    what is missing (the registered version) after a failure (tracking server down, registration cut short), or
    records it: a variant is recorded once and registered once.
    """
    uri = settings().tracking_uri
    key = recorded.key(uri, record.digest, record.name, bool(record.published), record.gate.passed,
                       view_state([r.task for r in record.table.rows]))
    if held := recorded.recall(uri, record.digest, key):
        _experiments.update({held.run_id: held.experiment_id, f"quantflow/{record.base.name}": held.experiment_id})
        return held.run_id
    try:
        run_id, experiment_id, version = _log_variant(record)
    except Exception as e:  # noqa: BLE001 - every failure here is "MLflow could not record it"
        detail = scrub(str(e).strip().splitlines()[0][:300]) if str(e).strip() else ""
        raise TrackingError(
            f"MLflow tracking at {safe_uri(uri)} could not record {record.name!r} ({type(e).__name__}: {detail}). "
            "The checkpoint, its evaluations and its publication are kept (cached): rerun the flow once the tracking "
            "server answers, it records the run once (QUANTFLOW_MLFLOW_TRACKING_URI sets the server)") from e
    _experiments.update({run_id: experiment_id, f"quantflow/{record.base.name}": experiment_id})
    recorded.remember(recorded.Recorded(key=key, run_id=run_id, experiment_id=experiment_id,
                                        model=record.name if version else None, version=version,
                                        candidate=bool(version) and record.gate.passed))
    return run_id


def _log_variant(r: VariantRecord) -> tuple[str, str, str | None]:
    """(run id, experiment id, registered version or None)."""
    import mlflow

    mlflow.set_tracking_uri(settings().tracking_uri)
    experiment_id = _experiment(mlflow, r.base, [row.task for row in r.table.rows])
    tags = {k: scrub(str(v)) for k, v in run_tags(r).items()}
    existing = find_record(mlflow, experiment_id, r.digest)
    if existing:
        return existing, experiment_id, register(existing, r.name, r.published, r.gate, r.table, tags)
    # The experiment names the base: the run is named by what sets it apart (quantized.w8a8, not a long shared prefix
    # the runs table cuts); the registered model keeps the full variant name.
    with mlflow.start_run(experiment_id=experiment_id, run_name=r.name.removeprefix(f"{r.base.name}-") or r.name,
                          tags={**tags, "mlflow.runColor": _colour(mlflow, experiment_id, r.name)}) as run:
        mlflow.log_params(flatten(run_params(r)))
        if r.calibration is not None:
            from datasets import load_from_disk

            # MLflow cannot infer a schema for token-id lists and logs the first rows whole while failing: the
            # dataset is recorded by its digest and profile, without that warning
            schema_log = logging.getLogger("mlflow.data.huggingface_dataset")
            level = schema_log.level
            schema_log.setLevel(logging.ERROR)
            try:
                ds = mlflow.data.from_huggingface(load_from_disk(r.calibration.path), path=r.calibration.path,
                                                  name=f"calibration-{r.calibration.digest[:12]}",
                                                  digest=r.calibration.digest[:32])
                mlflow.log_input(ds, context="calibration")
            finally:
                schema_log.setLevel(level)
        if r.suite_file is not None:
            mlflow.log_input(_suite_dataset(r.variant_eval, r.suite_file), context="evaluation")
        size = size_metrics(r.checkpoint, r.base)
        _log_metrics(mlflow, {**_eval_metrics(r.variant_eval), **gate_metrics(r.table, r.gate), **size})
        mlflow.set_tags(gate_tags(r.table, r.gate))
        mlflow.log_dict(r.gate.model_dump(mode="json"), "gate.json")
        mlflow.log_text(readable_card(r.card.read_text()), f"card/{r.card.name}")
        for name, path in run_files(r).items():
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=name)
            else:
                mlflow.log_artifact(str(path), artifact_path=name)
        _recovery_artifacts(mlflow, r.table, r.name, r.gate)
        if r.speed is not None:  # its checkpoint_mb only where size_metrics had none (the same files, from disk)
            served = {k: v for k, v in _serving_metrics(r.speed.variant).items()
                      if k != "checkpoint_mb" or size["checkpoint_mb"] is None}
            _log_metrics(mlflow, {**served,
                                  **{f"serving.gain.{_metric_name(row.label)}": _round(row.ratio, 2)
                                     for row in r.speed.rows()}})
        baseline_tags = {"quantflow.role": "baseline"}
        if r.base_eval.reference:
            baseline_tags["quantflow.baseline_reference"] = r.base_eval.reference
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"baseline-{r.base.name}", nested=True,
                              tags=baseline_tags):
            mlflow.log_params({"model.source": r.base.source, "model.digest": r.base.digest, "suite": r.base_eval.suite,
                               "engine": r.base_eval.settings.engine, "measured": r.base_eval.reference is None})
            _log_metrics(mlflow, {**_eval_metrics(r.base_eval),
                                  **(_serving_metrics(r.speed.base) if r.speed is not None else {})})
        run_id = run.info.run_id
    return run_id, experiment_id, register(run_id, r.name, r.published, r.gate, r.table, tags)


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
    experiment = _experiments.get(run_id)
    if experiment is None:
        import mlflow

        experiment = mlflow.get_run(run_id).info.experiment_id
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def experiment_url(base_name: str, charts: bool = False) -> str | None:
    """The base's runs table in the MLflow UI, headline columns first (the shared view `_experiment` sets), or with
    `charts` the view's charts, when tracking goes to a server and the experiment exists."""
    uri = settings().tracking_uri
    if not uri.startswith("http"):
        return None
    experiment_id = _experiments.get(f"quantflow/{base_name}")
    if experiment_id is None:
        import mlflow

        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(f"quantflow/{base_name}")
        if experiment is None:
            return None
        experiment_id = experiment.experiment_id
    # model-training mode (MLflow 3 opens an experiment in its GenAI mode unless told; the experiment's kind is not
    # enough once a browser has been in GenAI mode)
    mode = "&compareRunsMode=CHART" if charts else ""  # the table/charts toggle is the URL's, not the view's
    return (f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW}"
            f"&workflowType=machine_learning{mode}")


def register(run_id: str, name: str, published: list[Published], gate: GateVerdict, table: RecoveryTable,
             tags: dict[str, str]) -> str | None:
    """A registered model version per published variant (its number, None when nothing was published); alias
    `candidate` only on PASSED (not INCONCLUSIVE).

    Its source is the first remote store's URI (s3://, https://); a local-only publication points at the run's
    card artifact instead, since the registry accepts local paths only inside the run's artifacts.
    """
    from mlflow import MlflowClient

    if not published:
        return None
    client = MlflowClient(settings().tracking_uri)
    if client.search_registered_models(filter_string=f"name = '{name}'") == []:
        client.create_registered_model(name, tags={"quantflow.scheme": tags.get("quantflow.scheme", "")})
    done = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if done:  # registered by an earlier attempt: only make sure the alias follows the gate
        if gate.passed:
            client.set_registered_model_alias(name, "candidate", done[0].version)
        return str(done[0].version)
    version_tags = {**tags, "quantflow.gate": gate.state.value, **gate_tags(table, gate)}
    version_tags.update({f"quantflow.uri.{p.store}": p.uri for p in published})
    version_tags.update({f"quantflow.revision.{p.store}": p.revision for p in published if p.revision})
    remote = [p.uri for p in published if not p.uri.startswith("file:")]
    source = remote[0] if remote else f"{client.get_run(run_id).info.artifact_uri}/card"
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=version_tags)
    if gate.passed:
        client.set_registered_model_alias(name, "candidate", mv.version)
    return str(mv.version)
