"""Several variants of one base model side by side; calibration sets and the baseline evaluation are shared."""
from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from components import tracking
from components.card.render import average_label, interval, rec
from components.comparison import chart, chart_row
from components.specs import BaseModelSpec, CalibrationSpec, EvalSpec, Scheme, StoreSpec, VariantSpec
from flows.cache import key
from flows.quantize_variant import VariantOutcome, quantize_variant


class SweepSpec(BaseModel):
    """One base model, one calibration set-up, one suite, several schemes."""

    base: BaseModelSpec = BaseModelSpec()
    schemes: list[Scheme] = Field(default_factory=lambda: [Scheme.w8a8_int8, Scheme.fp8_dynamic], min_length=1)
    calibration: CalibrationSpec = CalibrationSpec()
    evaluation: EvalSpec = EvalSpec()
    stores: list[StoreSpec] = Field(default_factory=lambda: [StoreSpec()])

    def variants(self) -> list[VariantSpec]:
        return [VariantSpec(base=self.base, scheme=s, calibration=self.calibration, evaluation=self.evaluation,
                            stores=self.stores) for s in dict.fromkeys(self.schemes)]


def _cell(recovery: float | None, low: float | None, high: float | None, state: str | None) -> str:
    return f"{rec(recovery)} {interval(low, high)} {state or 'N/A'}"


def comparison(outcomes: list[VariantOutcome]) -> str:
    """Recovery per task with its interval and verdict, one column per variant; the verdict row last."""
    head = "| Benchmark | " + " | ".join(o.name for o in outcomes) + " |"
    lines = [head, "|---" * (len(outcomes) + 1) + "|"]
    for i, row in enumerate(outcomes[0].table.rows):
        lines.append(f"| {row.label} | " + " | ".join(
            _cell(o.table.rows[i].recovery, o.table.rows[i].ci_low, o.table.rows[i].ci_high, o.gate.tasks[i].state.value)
            for o in outcomes) + " |")
    averages = [_cell(o.table.average_recovery, o.table.average_ci_low, o.table.average_ci_high,
                      o.gate.average_state.value if o.gate.average_state else None) for o in outcomes]
    lines.append(f"| **{average_label(outcomes[0].table)}** | " + " | ".join(f"**{a}**" for a in averages) + " |")
    lines.append("| **Gate** | " + " | ".join(f"**{o.gate.state.value}**" for o in outcomes) + " |")
    return "\n".join(lines)


def comparison_rows(outcomes: list[VariantOutcome]) -> dict[str, list]:
    """The comparison as columns (MLflow's table view): one row per variant and task."""
    keys = ("variant", "gate", "task", "base", "quantized", "recovery", "ci_low", "ci_high", "verdict")
    cols: dict[str, list] = {k: [] for k in keys}
    for o in outcomes:
        for r, t in zip(o.table.rows, o.gate.tasks, strict=True):
            values = (o.name, o.gate.state.value, r.task, r.base, r.quant, r.recovery, r.ci_low, r.ci_high, t.state.value)
            for k, v in zip(keys, values, strict=True):
                cols[k].append(v)
    return cols


@task
def track_sweep(outcomes: list[VariantOutcome]) -> str:
    """The sweep's parent MLflow run, with the comparison; the variants' runs nest under it."""
    rows = [chart_row(o.name, o.table, o.gate) for o in outcomes]
    with tempfile.TemporaryDirectory() as tmp:
        png = chart([r.task for r in outcomes[0].table.rows], rows, Path(tmp) / "comparison.png")
        return tracking.log_sweep(
            record=key("sweep", *(o.mlflow_run_id for o in outcomes)), run_name=f"sweep-{flow_run.get_name()}",
            variant_runs=[o.mlflow_run_id for o in outcomes], table_rows=comparison_rows(outcomes), chart_png=png,
            tags={"quantflow.prefect_flow_run_id": str(flow_run.get_id() or ""),
                  "quantflow.prefect_flow_run_url": str(flow_run.get_flow_run_ui_url() or "")})


@flow(name="sweep", log_prints=True)
def sweep(spec: SweepSpec = SweepSpec()) -> list[VariantOutcome]:
    """Run each variant as a subflow, in order: the first computes the shared steps, the rest hit the cache."""
    outcomes = [quantize_variant(v) for v in spec.variants()]
    markdown = comparison(outcomes)
    create_markdown_artifact(key="sweep-recovery", markdown=markdown, description="Recovery of each variant vs the base")
    get_run_logger().info("Sweep recovery:\n%s\nMLflow parent run: %s", markdown, track_sweep(outcomes))
    return outcomes
