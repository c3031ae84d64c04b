"""Several variants of one base model side by side: schemes x calibration settings; calibration sets and the
baseline evaluation are shared (Prefect's task cache: content keys, persisted results).

In process (`dispatch: local`) the variants are subflows run one after another; with `dispatch: deployments` each is
a run of the `quantize-variant` deployment on its work pool, all at once, as many running as the pool has slots."""
from __future__ import annotations

import itertools
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from pydantic import Field, field_validator

from components import recipes, report, tracking
from components.card.render import average_label, interval, rec
from components.comparison import chart, chart_row
from components.models import model_name
from components.pod_limits import GpuNode
from components.specs import (BaseModelSpec, CalibrationSpec, EvalSpec, QuantizationSpec, Scheme, Stores, StoreSpec,
                              StrictModel, VariantSpec)
from flows.cache import key
from components.outcomes import VariantOutcome
from flows.quantize_variant import quantize_variant


class CalibrationOverride(StrictModel):
    """One point on the calibration axes: the fields given replace the sweep's `calibration` ones."""

    num_samples: int | None = Field(None, ge=1, le=65536)
    max_seq_length: int | None = Field(None, ge=8, le=131072)
    dataset: str | None = Field(None, description="Hub dataset id, or a local JSON/JSONL/parquet file or directory.")


class SweepSpec(StrictModel):
    """One base model, one suite; variants = schemes x calibration settings (data-free schemes once)."""

    base: BaseModelSpec = BaseModelSpec()
    schemes: list[Scheme] = Field(default_factory=lambda: [Scheme.w8a8_int8, Scheme.fp8_dynamic], min_length=1)
    calibration: CalibrationSpec = CalibrationSpec()
    calibrations: list[CalibrationOverride] = Field(
        default_factory=list, description="Calibration axes: one variant per scheme and entry, named "
                                          "`<base>-<suffix>-n<samples>-l<length>[-<dataset>]`; empty: `calibration` only.")
    quantization: QuantizationSpec = QuantizationSpec()
    evaluation: EvalSpec = EvalSpec()
    stores: Stores = Field(default_factory=lambda: [StoreSpec()])
    dispatch: Literal["local", "deployments"] = Field(
        "local", description="local: the variants one after another in this flow run's process; deployments: each a "
                             "run of `deployment` on its work pool, concurrently (needs a Prefect server and workers).")
    deployment: str = Field("quantize-variant/quantize-variant", description="`<flow>/<deployment>` the variants run as.")
    work_queue: str | None = Field(None, description="A queue of the deployment's work pool (e.g. a GPU queue); "
                                                     "default: the deployment's.")
    job_variables: dict[str, Any] = Field(
        default_factory=dict,
        description="Job variables for each variant run over the deployment's, e.g. "
                    "`{\"env\": {\"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK\": \"s3-bucket/quantflow-results\"}}`.")
    gpu_node: GpuNode | None = Field(
        None, title="GPU node", description="With `dispatch: deployments` to a Kubernetes GPU pool: the node type the "
                                            "variants run on. Each variant's pod is then sized from its memory plan "
                                            "(GPUs, memory request and limit, scratch); `job_variables` given here "
                                            "win. Empty: the deployment's own sizes.")

    @field_validator("gpu_node")
    @classmethod
    def _empty_node_sizes_nothing(cls, node: GpuNode | None) -> GpuNode | None:
        return None if node is not None and node.empty else node

    def variants(self) -> list[VariantSpec]:
        """Schemes x calibration overrides, in that order; a data-free scheme once, under its usual name."""
        out: dict[str, VariantSpec] = {}
        for scheme, override in itertools.product(dict.fromkeys(self.schemes), self.calibrations or [None]):
            scheme_def = recipes.load(scheme.value)
            calibration, name = self.calibration, None
            if override is not None and scheme_def.needs_calibration:
                calibration = CalibrationSpec.model_validate(
                    {**self.calibration.model_dump(), **override.model_dump(exclude_none=True)})
                name = f"{_base_name(self.base.source)}-{scheme_def.suffix}-n{calibration.num_samples}" \
                       f"-l{calibration.max_seq_length}" + (f"-{_dataset_name(calibration.dataset)}" if override.dataset else "")
            v = VariantSpec(base=self.base, scheme=scheme, calibration=calibration, quantization=self.quantization,
                            evaluation=self.evaluation, stores=self.stores, variant_name=name)
            out.setdefault(name or scheme.value, v)
        return list(out.values())


def _base_name(source: str) -> str:
    """The name the flow gives the base (components.models.resolve): a local folder by its resolved path."""
    return model_name(str(Path(source).resolve()) if Path(source).is_dir() else source)


def _dataset_name(dataset: str) -> str:
    """A Hub id's or file's last part without extension, as a plain name."""
    stem = dataset.rstrip("/").split("/")[-1].split(".")[0]
    return re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_")[:32] or "data"


def calibration_label(spec: VariantSpec) -> str:
    """`<samples> x <length>` (and the dataset where one is named), or data-free."""
    if not recipes.load(spec.scheme.value).needs_calibration:
        return "data-free"
    c = spec.calibration
    return f"{c.num_samples} x {c.max_seq_length}" + ("" if c.source == "random" else f" {_dataset_name(c.dataset)}")


def _cell(recovery: float | None, low: float | None, high: float | None, state: str | None) -> str:
    return f"{rec(recovery)} {interval(low, high)} {state or 'N/A'}"


def comparison(outcomes: list[VariantOutcome], specs: list[VariantSpec]) -> str:
    """Recovery per task with its interval and verdict, one column per variant (its calibration first); the verdict
    row last."""
    head = "| Benchmark | " + " | ".join(o.name for o in outcomes) + " |"
    lines = [head, "|---" * (len(outcomes) + 1) + "|",
             "| Calibration (samples x tokens) | " + " | ".join(calibration_label(s) for s in specs) + " |"]
    for i, row in enumerate(outcomes[0].table.rows):
        lines.append(f"| {row.label} | " + " | ".join(
            _cell(o.table.rows[i].recovery, o.table.rows[i].ci_low, o.table.rows[i].ci_high, o.gate.tasks[i].state.value)
            for o in outcomes) + " |")
    averages = [_cell(o.table.average_recovery, o.table.average_ci_low, o.table.average_ci_high,
                      o.gate.average_state.value if o.gate.average_state else None) for o in outcomes]
    lines.append(f"| **{average_label(outcomes[0].table)}** | " + " | ".join(f"**{a}**" for a in averages) + " |")
    lines.append("| **Gate** | " + " | ".join(f"**{o.gate.state.value}**" for o in outcomes) + " |")
    return "\n".join(lines)


def comparison_rows(outcomes: list[VariantOutcome], specs: list[VariantSpec]) -> dict[str, list]:
    """The comparison as columns (MLflow's table view): one row per variant and task, with its calibration."""
    keys = ("variant", "calibration", "gate", "task", "base", "quantized", "recovery", "ci_low", "ci_high", "verdict")
    cols: dict[str, list] = {k: [] for k in keys}
    for o, s in zip(outcomes, specs, strict=True):
        for r, t in zip(o.table.rows, o.gate.tasks, strict=True):
            values = (o.name, calibration_label(s), o.gate.state.value, r.task, r.base, r.quant, r.recovery, r.ci_low,
                      r.ci_high, t.state.value)
            for k, v in zip(keys, values, strict=True):
                cols[k].append(v)
    return cols


@task(task_run_name="record the sweep in MLflow")
def track_sweep(outcomes: list[VariantOutcome], specs: list[VariantSpec]) -> str:
    """The sweep's parent MLflow run, with the comparison; the variants' runs nest under it."""
    rows = [chart_row(o.name, o.table, o.gate) for o in outcomes]
    with tempfile.TemporaryDirectory() as tmp:
        png = chart([r.task for r in outcomes[0].table.rows], rows, Path(tmp) / "comparison.png")
        return tracking.log_sweep(
            record=key("sweep", *(o.mlflow_run_id for o in outcomes)), run_name=f"sweep-{flow_run.get_name()}",
            variant_runs=[o.mlflow_run_id for o in outcomes], table_rows=comparison_rows(outcomes, specs), chart_png=png,
            tags={"quantflow.prefect_flow_run_id": str(flow_run.get_id() or ""),
                  "quantflow.prefect_flow_run_url": str(flow_run.get_flow_run_ui_url() or "")})


def pod_job_variables(variant: VariantSpec, node: GpuNode) -> dict[str, Any]:
    """Job variables for the variant's GPU pod on `node` (components/pod_limits.size_for), from what its preflight
    will plan there: config.json read as preflight reads it (models.check: no weights), the memory plan, vLLM's tensor
    parallelism (fit.check). ValueError, one line with the numbers, when the plan does not fit a node."""
    from components import memory_plan as mp
    from components import models, overlap, pod_limits
    from components.evaluation import engine as engines
    from components.evaluation import fit, suites
    from components.evaluation.command import EngineSettings

    what = f"sizing the pod of variant {variant.variant_name or variant.scheme.value}"
    scheme = recipes.load(variant.scheme.value)
    base = models.check(variant.base.source, variant.base.revision)
    if base.value is None or base.value.config_json is None:
        raise ValueError(f"{what}: {'; '.join(base.problems) or 'no config.json'}")
    config, machine, ev = base.value.config_json, node.machine(), variant.evaluation
    shape = mp.shape_from_config(config)
    cal = variant.calibration if scheme.needs_calibration else None
    calib = mp.Calibration(num_samples=cal.num_samples if cal else 0, seq_len=cal.max_seq_length if cal else 0,
                           batch_size=variant.quantization.batch_size)
    q = mp.quantization_of(scheme)
    memory = mp.plan(shape, calib, q, machine)
    engine = engines.planned(ev, scheme, "cuda")
    fitted = fit.check(ev, config, scheme, suites.load(ev.suite), machine, "cuda", engine)
    if not memory.fits or fitted.problems:
        raise ValueError(f"{what} on a {machine.name}: {'; '.join(memory.problems + fitted.problems)}")
    tp = fit.concrete(fitted.value).tensor_parallel_size
    eval_gpus = overlap.evaluation_gpus(EngineSettings(engine=engine or "hf", platform="cuda", tensor_parallel_size=tp))
    disk = mp.disk_needed(shape, calib, q, converted=models.gguf_path(variant.base.source) is not None,
                          local_copies=sum(s.kind == "local" for s in variant.stores),
                          evaluations=1 if ev.reference_baseline else 2)
    return pod_limits.size_for(memory, mp.settings_for(variant.quantization, memory, machine), eval_gpus, disk, node,
                               ev.overlap_base)


@task(cache_policy=NO_CACHE)
def run_variant(variant: VariantSpec, spec: SweepSpec) -> VariantOutcome:
    """The variant as a run of the deployment on its work pool, shown under this sweep; its outcome is the run's
    persisted result (result storage the workers and this process share, e.g. the S3 block of infra/README.md). With
    `spec.gpu_node` its pod is sized from its plan, under the sweep's own job variables."""
    sized = pod_job_variables(variant, spec.gpu_node) if spec.gpu_node else {}
    run = run_deployment(spec.deployment, parameters={"spec": variant.model_dump(mode="json")},
                         work_queue_name=spec.work_queue, job_variables={**sized, **spec.job_variables} or None,
                         poll_interval=2,
                         flow_run_name=variant.variant_name or f"{flow_run.get_name()}-{variant.scheme.value}")
    if not run.state.is_completed():
        raise RuntimeError(f"variant run {run.name} ({run.id}) ended {run.state.type.value}: {run.state.message}")
    # the outcome's class lives in components.outcomes: the same import path in the child and here
    return VariantOutcome.model_validate(run.state.result())


@flow(name="sweep", log_prints=True)
def sweep(spec: SweepSpec = SweepSpec()) -> list[VariantOutcome]:
    """Every variant, then the comparison. In process the first variant computes the shared steps and the rest hit
    the cache; spread over a pool they run at once, and the shared steps are made once under their artifact's lock."""
    variants = spec.variants()
    if spec.dispatch == "deployments":
        outcomes = [f.result() for f in [run_variant.with_options(name=f"run {v.variant_name or v.scheme.value}")
                                         .submit(v, spec) for v in variants]]
    else:
        outcomes = [quantize_variant(v) for v in variants]
    markdown = comparison(outcomes, variants)
    create_markdown_artifact(key="sweep-recovery", markdown=markdown, description="Recovery of each variant vs the base")
    report.comparison(_base_name(spec.base.source))
    get_run_logger().info("Sweep recovery:\n%s\nMLflow parent run: %s", markdown, track_sweep(outcomes, variants))
    return outcomes
