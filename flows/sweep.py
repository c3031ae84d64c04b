"""Several variants of one base model side by side; calibration sets and the baseline evaluation are shared."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from components.card.render import rec
from components.specs import BaseModelSpec, CalibrationSpec, EvalSpec, Scheme, StoreSpec, VariantSpec
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


def comparison(outcomes: list[VariantOutcome]) -> str:
    """Recovery per task, one column per variant."""
    head = "| Benchmark | " + " | ".join(o.name for o in outcomes) + " |"
    lines = [head, "|---" * (len(outcomes) + 1) + "|"]
    for i, row in enumerate(outcomes[0].table.rows):
        lines.append(f"| {row.label} | " + " | ".join(rec(o.table.rows[i].recovery) for o in outcomes) + " |")
    lines.append("| **Average** | " + " | ".join(f"**{rec(o.table.average_recovery)}**" for o in outcomes) + " |")
    return "\n".join(lines)


@flow(name="sweep", log_prints=True)
def sweep(spec: SweepSpec = SweepSpec()) -> list[VariantOutcome]:
    """Run each variant as a subflow, in order: the first computes the shared steps, the rest hit the cache."""
    outcomes = [quantize_variant(v) for v in spec.variants()]
    markdown = comparison(outcomes)
    create_markdown_artifact(key="sweep-recovery", markdown=markdown, description="Recovery of each variant vs the base")
    get_run_logger().info("Sweep recovery:\n%s", markdown)
    return outcomes
