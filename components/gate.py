"""Three-state verdict for one quantized variant over its recovery table (pure).

The question is not "did the score drop" but "is the loss within the margin", asked of the recovery's confidence
interval (components/recovery.py: a paired bootstrap over documents where both sides logged per-document scores):
  - per task, the floor is 100 * (1 - rtol) percent recovery (rtol 0.08, vLLM's lm-eval CI tolerance);
    PASSED when the interval's lower bound is at or above it (the loss is shown to be within the margin),
    FAILED when its upper bound is below it (shown to be beyond), INCONCLUSIVE otherwise, with what would decide it:
    the documents needed at the observed difference (never more than the task has: then it says the task cannot),
    and for a published baseline that its own documents bound the interval (evaluate the base here, or a larger
    task). Perplexity-type tasks are judged as likelihood kept;
  - a recovery whose whole interval lies above PLAUSIBLE_RECOVERY is more than quantization can do: INCONCLUSIVE,
    flagged for review (a baseline from another evaluation, a mixed-up model), never PASSED;
  - rows whose recovery is N/A (baseline ~0, as card 002's Math-lvl-5) and rows whose baseline is NOT COMPARABLE
    (another task definition, version, document count, metric or filter) are reported, not gated;
  - the average row (llm-compressor's 95% floor) is judged the same way on its own interval.
Overall: FAILED if any task or the average is FAILED; PASSED only if every gated task and the average PASSED and no
row was NOT COMPARABLE (a task left unchecked is not a recovered task); INCONCLUSIVE otherwise (also when nothing
could be gated). Without any interval a row is INCONCLUSIVE: a point
estimate alone proves nothing either way.
"""
from __future__ import annotations

import math
from enum import Enum
from statistics import NormalDist

from pydantic import BaseModel, Field

from components.recovery import RecoveryRow, RecoveryTable, paired_recovery

RTOL = 0.08
MIN_AVERAGE_RECOVERY = 0.95
PLAUSIBLE_RECOVERY = 105.0  # percent: quantization does not make a model this much better on a task
_EPS = 1e-9  # relative slack for floating point at the exact threshold


class State(str, Enum):
    PASSED = "PASSED"
    FAILED = "FAILED"
    INCONCLUSIVE = "INCONCLUSIVE"
    NA = "N/A"  # reported, not gated
    NOT_COMPARABLE = "NOT COMPARABLE"  # the baseline is another evaluation: reported, not gated


class TaskVerdict(BaseModel):
    task: str
    label: str
    metric: str
    higher_is_better: bool
    base: float
    quant: float
    recovery: float | None  # percent
    ci_low: float | None
    ci_high: float | None
    floor: float = Field(description="the lowest recovery (percent) the margin accepts")
    method: str
    state: State
    docs_needed: int | None = Field(None, description="INCONCLUSIVE: documents that would decide at the observed spread")
    docs_available: int | None = Field(None, description="documents the task has (what docs_needed is capped by)")
    unpaired: bool = Field(False, description="the interval is unpaired (a published baseline): wider, see reason")
    reason: str

    @property
    def passed(self) -> bool:
        return self.state == State.PASSED


class GateVerdict(BaseModel):
    state: State
    rtol: float
    min_average_recovery: float | None
    confidence: float
    tasks: list[TaskVerdict]
    average_recovery: float | None  # percent, as in the table
    average_ci_low: float | None
    average_ci_high: float | None
    average_covers: str = Field(description="what the average is over, e.g. 'accuracy tasks, 2 of 3'")
    average_state: State | None  # None when there is no average or no floor
    reasons: list[str] = Field(description="why it is not PASSED (empty when it is)")
    notes: list[str] = Field(default_factory=list, description="rows reported but not gated, missing uncertainty")

    @property
    def passed(self) -> bool:
        return self.state == State.PASSED


def _fmt(x: float) -> str:
    return f"{x:.2f}%"


def decide(low: float | None, high: float | None, floor: float) -> State:
    """The interval against the floor: wholly at/above it PASSED, wholly below it FAILED, else INCONCLUSIVE."""
    if low is None or high is None:
        return State.INCONCLUSIVE
    if low >= floor - _EPS * max(1.0, abs(floor)):
        return State.PASSED
    if high < floor - _EPS * max(1.0, abs(floor)):
        return State.FAILED
    return State.INCONCLUSIVE


def docs_needed(point: float, se: float | None, n: int | None, floor: float, confidence: float) -> int | None:
    """Documents at which the interval (width ~ 1/sqrt(n) at the observed spread) would clear the floor on one side."""
    gap = abs(point - floor)
    if not se or not n or gap == 0:
        return None
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    return math.ceil(n * (z * se / gap) ** 2)


def _paired_docs_needed(row: RecoveryRow, floor: float, confidence: float) -> int | None:
    """Pass/fail, paired: the fewest documents at which the same paired score interval, the same shares gained, lost
    and right, clears the floor (its width falls as 1/n when none differ, as 1/sqrt(n) otherwise)."""
    if row.recovery is None or abs(row.recovery - floor) < 1e-9 or not row.n_docs or not row.base_right:
        return None
    n = row.n_docs

    def decided(m: float) -> bool:
        k = m / n
        lo, hi = paired_recovery(row.gained * k, row.lost * k, m, row.base_right * k, confidence)
        return decide(lo, hi, floor) != State.INCONCLUSIVE

    hi = n
    while not decided(hi):
        hi *= 2
        if hi > 1e9:
            return None
    lo = n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if decided(mid) else (mid, hi)
    return hi


def _what_decides(row: RecoveryRow, floor: float, confidence: float) -> tuple[int | None, str]:
    """(documents needed, the sentence saying what would decide this INCONCLUSIVE row)."""
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    gap = abs(row.recovery - floor)
    if not row.paired and row.base_stderr and row.base:
        own = 100.0 * z * row.base_stderr / abs(row.base)
        docs = f" ({row.n_available or row.n_docs} documents)" if (row.n_available or row.n_docs) else ""
        if gap <= own:
            return None, (f"; against a published baseline no number of the variant's documents decides it: the "
                          f"baseline's own sampling error{docs} alone is ±{own:.2f} points of recovery and the "
                          f"difference is {gap:.2f}; evaluate the base here (a paired interval) or use a larger task")
        more = docs_needed(row.recovery, row.recovery_se, row.n_docs, floor, confidence)
        head = f"; about {more} documents on each side would decide it" if more else ""
        if more and row.n_available and more > row.n_available:
            head = (f"; this task cannot decide it at this difference: {row.n_available} documents exist, about {more} "
                    "on each side would be needed")
        return more, head + "; evaluating the base here (paired, over the same documents) usually decides with far fewer"
    if row.gained is not None:
        need = _paired_docs_needed(row, floor, confidence)
    elif "rule-of-three" in row.method and row.ci_low is not None:
        need = math.ceil(row.n_docs * (row.recovery - row.ci_low) / gap) if gap else None  # width ~ 1/n
    else:
        need = docs_needed(row.recovery, row.recovery_se, row.n_docs, floor, confidence)
    if need is None:
        return None, ""
    if row.n_available and need > row.n_available:
        return need, (f"; this task cannot decide it at this difference: {row.n_available} documents exist, "
                      f"about {need} would be needed")
    return need, f"; about {need} documents would decide it"


def task_verdict(row: RecoveryRow, rtol: float = RTOL, confidence: float = 0.90) -> TaskVerdict:
    """One task: N/A and NOT COMPARABLE rows are reported only; the others are decided on their interval."""
    floor = 100.0 * (1 - rtol)
    unpaired = row.method.startswith("unpaired")
    common = dict(task=row.task, label=row.label, metric=row.metric, higher_is_better=row.higher_is_better,
                  base=row.base, quant=row.quant, recovery=row.recovery, ci_low=row.ci_low, ci_high=row.ci_high,
                  floor=floor, method=row.method, docs_available=row.n_available, unpaired=unpaired)
    kind = "likelihood kept" if row.log_scale else "recovery"
    if row.not_comparable:
        return TaskVerdict(**common, state=State.NOT_COMPARABLE,
                           reason=f"not comparable, reported, not gated: {row.not_comparable}")
    if row.recovery is None:
        return TaskVerdict(**common, state=State.NA, reason="recovery N/A (baseline ~0): reported, not gated")
    if row.ci_low is None:
        return TaskVerdict(**common, state=State.INCONCLUSIVE,
                           reason=f"{kind} {_fmt(row.recovery)} with no interval (no per-document scores and no stderr)")
    state = decide(row.ci_low, row.ci_high, floor)
    interval = f"{kind} {_fmt(row.recovery)}, {100 * confidence:g}% interval [{_fmt(row.ci_low)}, {_fmt(row.ci_high)}]"
    cost = (", unpaired against a published baseline: both sides' sampling error counts, where a paired evaluation "
            "cancels what the documents share" if unpaired else "")
    if row.ci_low > PLAUSIBLE_RECOVERY:
        return TaskVerdict(**common, state=State.INCONCLUSIVE,
                           reason=f"{interval} lies above {PLAUSIBLE_RECOVERY:g}%, more than quantization plausibly "
                                  f"gives: flagged for review (is the baseline the same evaluation?) ({row.method})")
    if state == State.PASSED:
        return TaskVerdict(**common, state=state, reason=f"{interval} >= {floor:g}% ({row.method}){cost}")
    if state == State.FAILED:
        return TaskVerdict(**common, state=state, reason=f"{interval} < {floor:g}% ({row.method}){cost}")
    need, more = _what_decides(row, floor, confidence)
    return TaskVerdict(**common, state=state, docs_needed=need,
                       reason=f"{interval} straddles {floor:g}% ({row.method}){cost}{more}")


def gate(table: RecoveryTable, rtol: float = RTOL, min_average_recovery: float | None = MIN_AVERAGE_RECOVERY) -> GateVerdict:
    """The variant's verdict: per-task states, the average's state, and the overall state with its reasons.

    rtol: per-task relative margin; min_average_recovery: floor of the average as a fraction (None: not checked).
    """
    if rtol < 0:
        raise ValueError("rtol must be >= 0")
    tasks = [task_verdict(r, rtol, table.confidence) for r in table.rows]
    gated = [t for t in tasks if t.state not in (State.NA, State.NOT_COMPARABLE)]
    reasons = [f"{t.label}: {t.state.value}: {t.reason}" for t in gated if t.state != State.PASSED]
    notes = [f"{t.label}: {t.state.value}: {t.reason}" if t.state == State.NOT_COMPARABLE else f"{t.label}: {t.reason}"
             for t in tasks if t.state in (State.NA, State.NOT_COMPARABLE)]
    if any(t.unpaired for t in gated):
        notes.append("unpaired intervals: the baseline is published (no per-document scores), so each interval carries "
                     "both sides' sampling error and needs a larger margin to decide; evaluating the base here gives "
                     "paired intervals over the same documents")
    average_state = None
    if min_average_recovery is not None:
        floor = 100.0 * min_average_recovery
        if table.average_recovery is None:
            notes.append("no average recovery (no accuracy task, or a baseline average ~0): floor not checked")
        else:
            average_state = decide(table.average_ci_low, table.average_ci_high, floor)
            if average_state != State.PASSED:
                interval = ("no interval" if table.average_ci_low is None else
                            f"interval [{_fmt(table.average_ci_low)}, {_fmt(table.average_ci_high)}]")
                reasons.append(f"average recovery ({table.average_covers}): {average_state.value}: "
                               f"{_fmt(table.average_recovery)}, {interval} vs floor {floor:g}%")
    states = [t.state for t in gated] + ([average_state] if average_state else [])
    unchecked = [t.label for t in tasks if t.state == State.NOT_COMPARABLE]
    if State.FAILED in states:
        state = State.FAILED
    elif gated and all(s == State.PASSED for s in states) and not unchecked:
        state = State.PASSED
    else:
        if unchecked and gated and all(s == State.PASSED for s in states):
            reasons.append(f"not every task was checked: {', '.join(unchecked)} had no comparable baseline "
                           "(evaluate the base here, with the same lm-eval, to gate them)")
        state = State.INCONCLUSIVE
        if not gated:
            reasons.append("no task could be gated (every recovery is N/A or NOT COMPARABLE)")
    return GateVerdict(state=state, rtol=rtol, min_average_recovery=min_average_recovery, confidence=table.confidence,
                       tasks=tasks, average_recovery=table.average_recovery, average_ci_low=table.average_ci_low,
                       average_ci_high=table.average_ci_high, average_covers=table.average_covers,
                       average_state=average_state, reasons=reasons, notes=notes)
