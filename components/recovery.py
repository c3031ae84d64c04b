"""Recovery table as in the cards: per task quantized / baseline, and the average row (pure)."""
from __future__ import annotations

from pydantic import BaseModel

from components.evaluation.results import TaskScore


class RecoveryRow(BaseModel):
    task: str
    label: str
    metric: str
    base: float
    quant: float
    base_stderr: float | None
    quant_stderr: float | None
    higher_is_better: bool
    recovery: float | None  # percent; None where the baseline is ~0 (the cards print N/A)


class RecoveryTable(BaseModel):
    rows: list[RecoveryRow]
    average_base: float | None
    average_quant: float | None
    average_recovery: float | None


def recovery(base: float, quant: float, higher_is_better: bool = True, eps: float = 1e-2) -> float | None:
    """Quantized over baseline in percent; for lower-is-better metrics (perplexity) baseline over quantized."""
    if higher_is_better:
        return None if abs(base) < eps else 100.0 * quant / base
    return None if abs(quant) < eps else 100.0 * base / quant


def table(base: dict[str, TaskScore], quant: dict[str, TaskScore]) -> RecoveryTable:
    """Rows in baseline order. The average is over higher-is-better tasks, as the ratio of the mean scores."""
    if set(base) != set(quant):
        raise ValueError(f"baseline and variant were evaluated on different tasks: {sorted(base)} vs {sorted(quant)}")
    rows = []
    for name, b in base.items():
        q = quant[name]
        rows.append(RecoveryRow(task=name, label=b.label, metric=b.metric, base=b.value, quant=q.value,
                                base_stderr=b.stderr, quant_stderr=q.stderr, higher_is_better=b.higher_is_better,
                                recovery=recovery(b.value, q.value, b.higher_is_better)))
    avg = [r for r in rows if r.higher_is_better]
    if not avg:
        return RecoveryTable(rows=rows, average_base=None, average_quant=None, average_recovery=None)
    mb = sum(r.base for r in avg) / len(avg)
    mq = sum(r.quant for r in avg) / len(avg)
    return RecoveryTable(rows=rows, average_base=mb, average_quant=mq, average_recovery=recovery(mb, mq))
