"""Pass/fail gate for one quantized variant over its recovery table (pure).

Three rules, all of which must hold:
  1. per task, one-sided relative tolerance as in vLLM's lm-eval CI (rtol 0.08): higher-is-better
     `quant >= base * (1 - rtol)`, lower-is-better (perplexity) `quant <= base * (1 + rtol)`; written with |base| so a
     negative baseline does not flip the direction;
  2. interval-aware: a task outside the tolerance fails only if the drop is significant given both stderrs,
     z = (base - quant) / sqrt(se_base^2 + se_quant^2) > z_crit (1.645: one-sided 95%), so small suites do not fail on
     noise. A missing stderr counts as 0 (conservative); with no stderr at all the tolerance alone decides;
  3. the average recovery over higher-is-better tasks (the card's average row) is at least min_average_recovery
     (0.95, as llm-compressor's e2e tests), when the table has one (None: baseline average ~0 or no such tasks).
"""
from __future__ import annotations

import math

from pydantic import BaseModel, Field

from components.recovery import RecoveryRow, RecoveryTable

RTOL = 0.08
MIN_AVERAGE_RECOVERY = 0.95
Z_CRIT = 1.645  # one-sided 95%
_EPS = 1e-9  # relative slack for floating point at the exact threshold


class TaskVerdict(BaseModel):
    task: str
    label: str
    metric: str
    higher_is_better: bool
    base: float
    quant: float
    threshold: float = Field(description="the worst quantized score the tolerance accepts")
    within_rtol: bool
    z: float | None = Field(None, description="significance of the regression, when outside the tolerance")
    significant: bool | None = None
    passed: bool
    reason: str


class GateVerdict(BaseModel):
    passed: bool
    rtol: float
    min_average_recovery: float | None
    z_crit: float | None
    tasks: list[TaskVerdict]
    average_recovery: float | None  # percent, as in the table
    average_passed: bool | None  # None when there is no average to check
    reasons: list[str] = Field(description="why it failed (empty when passed)")
    notes: list[str] = Field(default_factory=list, description="passes worth a look: noise, degenerate baselines")


def _ge(a: float, b: float, scale: float) -> bool:
    return a >= b - _EPS * max(1.0, abs(scale))


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def task_verdict(row: RecoveryRow, rtol: float = RTOL, z_crit: float | None = Z_CRIT) -> TaskVerdict:
    """One task: tolerance test, then (if it fails and z_crit is set) the significance test."""
    base, quant = row.base, row.quant
    if row.higher_is_better:
        threshold = base - rtol * abs(base)
        within = _ge(quant, threshold, base)
        drop = base - quant
    else:
        threshold = base + rtol * abs(base)
        within = _ge(threshold, quant, base)
        drop = quant - base
    common = dict(task=row.task, label=row.label, metric=row.metric, higher_is_better=row.higher_is_better,
                  base=base, quant=quant, threshold=threshold, within_rtol=within)
    direction = ">=" if row.higher_is_better else "<="
    degenerate = " (baseline 0: the tolerance is a strict comparison)" if base == 0 else ""
    if within:
        return TaskVerdict(**common, passed=True,
                           reason=f"{_fmt(quant)} {direction} {_fmt(threshold)} (rtol {rtol:g}){degenerate}")
    outside = f"{_fmt(quant)} not {direction} {_fmt(threshold)} (base {_fmt(base)}, rtol {rtol:g}){degenerate}"
    if z_crit is None:
        return TaskVerdict(**common, passed=False, reason=outside)
    se_b = row.base_stderr if row.base_stderr is not None and math.isfinite(row.base_stderr) else 0.0
    se_q = row.quant_stderr if row.quant_stderr is not None and math.isfinite(row.quant_stderr) else 0.0
    missing = [name for name, se in (("baseline", row.base_stderr), ("variant", row.quant_stderr)) if se is None]
    se = math.sqrt(se_b ** 2 + se_q ** 2)
    if se == 0.0:
        why = f"no stderr ({' and '.join(missing)} missing)" if missing else "stderr 0"
        return TaskVerdict(**common, significant=None, passed=False,
                           reason=f"{outside}; {why}, so it cannot be put down to noise")
    z = drop / se
    note = f" ({' and '.join(missing)} stderr missing, taken as 0)" if missing else ""
    if z > z_crit:
        return TaskVerdict(**common, z=z, significant=True, passed=False,
                           reason=f"{outside}; significant: z = {z:.2f} > {z_crit:g}{note}")
    return TaskVerdict(**common, z=z, significant=False, passed=True,
                       reason=f"{outside}, but within noise: z = {z:.2f} <= {z_crit:g}{note}")


def gate(table: RecoveryTable, rtol: float = RTOL, min_average_recovery: float | None = MIN_AVERAGE_RECOVERY,
         z_crit: float | None = Z_CRIT) -> GateVerdict:
    """The variant passes when every task passes and the average recovery clears the floor.

    rtol: per-task relative tolerance; min_average_recovery: floor as a fraction (None: no floor);
    z_crit: one-sided critical z for discounting noise (None: the tolerance alone decides).
    """
    if rtol < 0:
        raise ValueError("rtol must be >= 0")
    tasks = [task_verdict(r, rtol, z_crit) for r in table.rows]
    reasons = [f"{t.label}: {t.reason}" for t in tasks if not t.passed]
    notes = [f"{t.label}: {t.reason}" for t in tasks if t.passed and not t.within_rtol]
    average_passed = None
    if min_average_recovery is not None:
        if table.average_recovery is None:
            notes.append("no average recovery (no higher-is-better task, or a baseline average ~0): floor not checked")
        else:
            floor = 100.0 * min_average_recovery
            average_passed = _ge(table.average_recovery, floor, floor)
            if not average_passed:
                reasons.append(f"average recovery {table.average_recovery:.2f}% < {floor:g}%")
    return GateVerdict(passed=not reasons, rtol=rtol, min_average_recovery=min_average_recovery, z_crit=z_crit,
                       tasks=tasks, average_recovery=table.average_recovery, average_passed=average_passed,
                       reasons=reasons, notes=notes)
