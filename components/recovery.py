"""Recovery table as in the cards: per task quantized / baseline, the average row, and their confidence intervals.

Pure (numpy, fixed seed). Base and variant answer the same documents, so where both have per-document scores
(lm-eval `--log_samples`) the interval is a paired bootstrap: documents are resampled, and each draw keeps a document's
base and variant score together, which cancels the documents' difficulty out of the comparison. Where one side has no
per-document scores (a published baseline) the sides are drawn independently: that side from a normal with its stderr
(a binomial stderr from its document count when it published none), an unpaired and wider interval.

Few differing documents: a bootstrap over documents that mostly agree collapses (one gained document in 30 gives
[100%, 122%]; none gives a point). For pass/fail scores the interval is therefore never narrower than Tango's score
interval for the difference of paired proportions, built from the discordant counts (documents gained, lost) and
honest with none or one of them; other [0, 1] scores with no differing document take the rule-of-three bound. Each
bound is clamped to what the score can reach (a recovery below 0% or above 100% / base means nothing).

Perplexity-type metrics work on the log scale: the statistic is the mean log-likelihood per word (byte, document) and
recovery is the likelihood kept, exp(ll_quant - ll_base), which equals ppl_base / ppl_quant for the point estimate.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, Field, computed_field

from components.evaluation.results import LOG_SCALE, DocScores, TaskScore, binomial_se, not_comparable

CONFIDENCE = 0.90  # two-sided; each bound alone is a one-sided 95% test (the old gate's z 1.645)
N_BOOT = 2000
SEED = 0
_CHUNK = 250  # bootstrap draws per block: bounds memory at _CHUNK x documents indices
_EPS = 1e-2  # a baseline this close to 0 has no meaningful ratio (the cards print N/A)


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
    ci_low: float | None = None  # percent: the CONFIDENCE interval of recovery (None: no uncertainty known)
    ci_high: float | None = None
    recovery_se: float | None = Field(None, description="bootstrap standard deviation of recovery (percent)")
    n_docs: int | None = None
    method: str = "none"  # how the interval was made: paired bootstrap, unpaired, or none
    log_scale: bool = False  # perplexity-type: recovery is the likelihood kept per word/byte/document
    paired: bool = False
    gained: int | None = Field(None, description="pass/fail, paired: documents the variant got right and the base wrong")
    lost: int | None = Field(None, description="pass/fail, paired: documents the base got right and the variant wrong")
    base_right: int | None = Field(None, description="pass/fail, paired: documents the base got right")
    n_available: int | None = Field(None, description="documents the task has (more than n_docs under a limit)")
    not_comparable: str | None = Field(None, description="why baseline and variant are not the same evaluation: "
                                                         "reported, not gated, not averaged")


class RecoveryTable(BaseModel):
    rows: list[RecoveryRow]
    average_base: float | None
    average_quant: float | None
    average_recovery: float | None
    average_ci_low: float | None = None
    average_ci_high: float | None = None
    average_tasks: list[str] = Field(default_factory=list, description="the tasks the average row covers")
    confidence: float = CONFIDENCE

    @computed_field
    @property
    def average_covers(self) -> str:
        """What the average is over, for every display of it."""
        n, k = len(self.rows), len(self.average_tasks)
        if k == n:
            return f"all {n} tasks" if n > 1 else "its only task"
        return f"accuracy tasks, {k} of {n}"


def recovery(base: float, quant: float, higher_is_better: bool = True, eps: float = _EPS) -> float | None:
    """Quantized over baseline in percent; for lower-is-better metrics (perplexity) baseline over quantized."""
    if higher_is_better:
        return None if abs(base) < eps else 100.0 * quant / base
    return None if abs(quant) < eps else 100.0 * base / quant


def _scale(s: TaskScore) -> tuple[float, float | None]:
    """(statistic, its stderr) on the additive scale: the score, or the mean log-likelihood per unit."""
    if s.metric in LOG_SCALE:
        x = LOG_SCALE[s.metric](s.value)
        se = None if s.stderr is None else abs(LOG_SCALE[s.metric](s.value + s.stderr) - x)
        return x, se
    return s.value, s.stderr if s.stderr is not None else binomial_se(s.value, s.n)


def _likelihood_kept(b: TaskScore, q: TaskScore) -> float | None:
    """Perplexity-type recovery in percent: exp(ll_quant - ll_base) per unit (ppl_base / ppl_quant)."""
    try:
        return 100.0 * math.exp(_scale(q)[0] - _scale(b)[0])
    except (ValueError, OverflowError):  # a non-positive perplexity: no likelihood to compare
        return None


def _strata(ids: list[str]) -> list[np.ndarray]:
    """Document positions per leaf task (ids are `<leaf>/<doc_id>`): a group is resampled within each leaf."""
    leaves: dict[str, list[int]] = {}
    for i, doc in enumerate(ids):
        leaves.setdefault(doc.rsplit("/", 1)[0], []).append(i)
    return [np.asarray(v) for v in leaves.values()]


def _bootstrap(sides: list[DocScores], rng: np.random.Generator, n_boot: int) -> list[np.ndarray]:
    """Bootstrap draws of each side's statistic, all sides resampled with the same documents (paired when 2)."""
    first = sides[0]
    vals = [np.asarray(s.values, dtype=float) for s in sides]
    wts = [np.ones(len(s.values)) if s.weights is None else np.asarray(s.weights, dtype=float) for s in sides]
    strata = _strata(first.ids)
    sums = [np.zeros((n_boot, len(strata))) for _ in sides]
    wsum = [np.zeros((n_boot, len(strata))) for _ in sides]
    for j, pos in enumerate(strata):
        for start in range(0, n_boot, _CHUNK):
            stop = min(start + _CHUNK, n_boot)
            idx = pos[rng.integers(0, len(pos), size=(stop - start, len(pos)))]
            for k in range(len(sides)):
                sums[k][start:stop, j] = vals[k][idx].sum(axis=1)
                wsum[k][start:stop, j] = wts[k][idx].sum(axis=1)
    if first.pooled:
        return [s.sum(axis=1) / w.sum(axis=1) for s, w in zip(sums, wsum, strict=True)]
    return [(s / w).mean(axis=1) for s, w in zip(sums, wsum, strict=True)]


def _paired(b: DocScores, q: DocScores) -> tuple[DocScores, DocScores] | None:
    """Both sides in the baseline's document order, or None when they did not answer the same documents."""
    if sorted(b.ids) != sorted(q.ids) or len(set(b.ids)) != len(b.ids):
        return None
    where = {doc: i for i, doc in enumerate(q.ids)}
    order = [where[doc] for doc in b.ids]
    aligned = DocScores(ids=b.ids, values=[q.values[i] for i in order],
                        weights=None if q.weights is None else [q.weights[i] for i in order], pooled=q.pooled)
    return b, aligned


def _one_side(s: TaskScore, rng: np.random.Generator, n_boot: int) -> np.ndarray | None:
    """Draws of one side alone: its own documents resampled, else a normal with its stderr; None: no spread known."""
    if s.samples is not None:
        return _bootstrap([s.samples], rng, n_boot)[0]
    x, se = _scale(s)
    return None if not se else rng.normal(x, se, n_boot)


def draws(b: TaskScore, q: TaskScore, rng: np.random.Generator, n_boot: int = N_BOOT
          ) -> tuple[np.ndarray, np.ndarray, str, int | None, tuple[DocScores, DocScores] | None] | None:
    """(base draws, variant draws, method, documents, the aligned per-document scores when paired) on the additive
    scale, or None when neither side has a spread."""
    if b.samples is not None and q.samples is not None and (pair := _paired(b.samples, q.samples)):
        rb, rq = _bootstrap(list(pair), rng, n_boot)
        return rb, rq, f"paired bootstrap over {len(pair[0].ids)} documents", len(pair[0].ids), pair
    db, dq = _one_side(b, rng, n_boot), _one_side(q, rng, n_boot)
    if db is None and dq is None:
        return None
    missing = [name for name, d in (("baseline", db), ("variant", dq)) if d is None]
    db = np.full(n_boot, _scale(b)[0]) if db is None else db
    dq = np.full(n_boot, _scale(q)[0]) if dq is None else dq
    how = "unpaired: base and variant drawn independently"
    if missing:
        how += f", {' and '.join(missing)} stderr unknown (taken as 0)"
    n = q.n or b.n or (len(q.samples.ids) if q.samples else None)
    return db, dq, how, n, None


def _no_difference_bound(base: float, n: int, confidence: float) -> tuple[float, float, float] | None:
    """Interval when no document's score differs: the bootstrap collapses to a point, yet n documents only show the
    share of documents that would differ is below -ln((1 - c) / 2) / n (the rule of three at 95%); each such document
    moves a [0, 1] score by at most 1 / n. None where the baseline is ~0 (no ratio)."""
    if abs(base) < _EPS:
        return None
    half = 100.0 * -math.log((1 - confidence) / 2) / n / abs(base)
    return max(0.0, 100.0 - half), min(100.0 / abs(base), 100.0 + half), half / _z(confidence)


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf((1 + confidence) / 2)


def _tango_z(gained, lost, n, delta):
    """Tango's score statistic for H0: P(gained) - P(lost) = delta, the nuisance P(lost) at its constrained MLE
    (numpy arrays or numbers)."""
    d_hat = (gained - lost) / n
    a, b = 2 * n, 2 * delta * (n - gained) - (gained + lost) * (1 - delta)
    c = -lost * delta * (1 - delta)
    x = np.maximum((-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))) / (2 * a), np.maximum(0.0, -delta))
    var = (2 * x + delta - delta * delta) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(d_hat - delta) / np.sqrt(var)
    return np.where(var > 0, z, np.where(d_hat == delta, 0.0, np.inf))


def paired_difference(gained, lost, n, confidence: float = CONFIDENCE):
    """Tango's score interval (Statistics in Medicine 17, 1998) for the difference of two paired proportions,
    (gained - lost) / n, from the discordant counts alone; counts may be fractional (a scaled-up task) and arrays."""
    gained, lost, n = (np.asarray(v, dtype=float) for v in (gained, lost, n))
    z, d_hat = _z(confidence), (gained - lost) / n

    def edge(far: float):
        near, far = d_hat, np.full_like(d_hat, far)
        for _ in range(50):
            mid = (near + far) / 2
            inside = _tango_z(gained, lost, n, mid) <= z
            near, far = np.where(inside, mid, near), np.where(inside, far, mid)
        return near

    lo, hi = edge(-1.0), edge(1.0)
    return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)


def paired_recovery(gained, lost, n, base_right, confidence: float = CONFIDENCE):
    """Recovery (percent) interval of a pass/fail task from the paired score interval, within [0, 100 / base]."""
    lo, hi = paired_difference(gained, lost, n, confidence)
    p = np.asarray(base_right, dtype=float) / np.asarray(n, dtype=float)
    low, high = np.maximum(0.0, 100.0 * (p + lo) / p), np.minimum(100.0 / p, 100.0 * (p + hi) / p)
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)


def _pass_fail(b: DocScores, q: DocScores) -> bool:
    """Both sides score each document 0 or 1, one document each (so the discordant counts are the data)."""
    return b.weights is None and q.weights is None and all(v in (0.0, 1.0) for v in b.values + q.values)


def _ratio(rb: np.ndarray, rq: np.ndarray, log_scale: bool, higher_is_better: bool) -> np.ndarray:
    """Recovery (percent) of each draw."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if log_scale:
            return 100.0 * np.exp(rq - rb)
        return 100.0 * (rq / rb if higher_is_better else rb / rq)


def _interval(r: np.ndarray, confidence: float) -> tuple[float, float, float] | None:
    r = r[np.isfinite(r)]
    if r.size < 2:
        return None
    lo, hi = np.quantile(r, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi), float(r.std(ddof=1))


def _task_interval(row: dict, b: TaskScore, pair: tuple[DocScores, DocScores] | None, ci, confidence: float):
    """The row's interval where the bootstrap cannot be trusted alone: pass/fail tasks never narrower than the paired
    score interval; other [0, 1] scores with no differing document the rule-of-three bound; proportions clamped."""
    hib, log_scale = b.higher_is_better, row["log_scale"]
    if pair is not None and not log_scale and _pass_fail(*pair) and hib and b.value > _EPS:
        base_v, quant_v = pair[0].values, pair[1].values
        row["gained"] = sum(1 for x, y in zip(base_v, quant_v, strict=True) if y > x)
        row["lost"] = sum(1 for x, y in zip(base_v, quant_v, strict=True) if y < x)
        row["base_right"] = int(sum(base_v))
        if row["base_right"]:
            lo, hi = paired_recovery(row["gained"], row["lost"], len(base_v), row["base_right"], confidence)
            none = ", none differing" if row["gained"] + row["lost"] == 0 else ""
            row["method"] += f", never narrower than the paired score interval ({row['gained']} gained, {row['lost']} lost{none})"
            if ci is None:
                return lo, hi, (hi - lo) / 2 / _z(confidence)
            return min(lo, ci[0]), max(hi, ci[1]), ci[2]
    if (ci and pair is not None and not log_scale and pair[0].values == pair[1].values
            and pair[0].weights == pair[1].weights and all(0.0 <= v <= 1.0 for v in pair[0].values)):
        row["method"] += ", none differing (rule-of-three bound)"
        return _no_difference_bound(b.value, row["n_docs"], confidence)
    if ci and not log_scale and hib and 0.0 < b.value <= 1.0:
        return max(0.0, ci[0]), min(100.0 / b.value, ci[1]), ci[2]
    return ci


def _shift(row: RecoveryRow) -> tuple[float, float] | None:
    """The row's interval as score differences (variant - base, score units) below and above the point."""
    if row.ci_low is None or row.recovery is None:
        return None
    return (row.quant - row.base) - row.base * (row.ci_low / 100 - 1), row.base * (row.ci_high / 100 - 1) - (row.quant - row.base)


def table(base: dict[str, TaskScore], quant: dict[str, TaskScore], confidence: float = CONFIDENCE,
          n_boot: int = N_BOOT, seed: int = SEED) -> RecoveryTable:
    """Rows in baseline order, each with its interval. The average row is over the comparable higher-is-better
    accuracy tasks (perplexity has no score to average with them; `average_covers` says so), as the ratio of the mean
    scores, with an interval from the same draws (tasks are independent data sets), never narrower than the tasks'
    own intervals combined (so a task with few differing documents widens the average as it widens itself)."""
    if set(base) != set(quant):
        raise ValueError(f"baseline and variant were evaluated on different tasks: {sorted(base)} vs {sorted(quant)}")
    rows, task_draws = [], {}
    for i, (name, b) in enumerate(base.items()):
        q = quant[name]
        log_scale = b.metric in LOG_SCALE
        point = _likelihood_kept(b, q) if log_scale else recovery(b.value, q.value, b.higher_is_better)
        row = dict(task=name, label=b.label, metric=b.metric, base=b.value, quant=q.value, base_stderr=b.stderr,
                   quant_stderr=q.stderr, higher_is_better=b.higher_is_better, recovery=point, log_scale=log_scale,
                   n_available=q.n_available or b.n_available, not_comparable=not_comparable(b.evaluated, q.evaluated))
        d = draws(b, q, np.random.default_rng([seed, i]), n_boot)
        if d is not None:
            rb, rq, row["method"], row["n_docs"], pair = d
            row["paired"] = pair is not None
            task_draws[name] = (rb, rq)
            ci = _interval(_ratio(rb, rq, log_scale, b.higher_is_better), confidence) if point is not None else None
            if point is not None and (ci := _task_interval(row, b, pair, ci, confidence)):
                row["ci_low"], row["ci_high"], row["recovery_se"] = ci
        rows.append(RecoveryRow(**row))
    covered = [r for r in rows if r.higher_is_better and not r.log_scale and r.not_comparable is None]
    if not covered:
        return RecoveryTable(rows=rows, average_base=None, average_quant=None, average_recovery=None, confidence=confidence)
    mb = sum(r.base for r in covered) / len(covered)
    mq = sum(r.quant for r in covered) / len(covered)
    avg = recovery(mb, mq)
    lo = hi = None
    if avg is not None and any(r.task in task_draws for r in covered):
        sb = sum(task_draws[r.task][0] if r.task in task_draws else np.full(n_boot, r.base) for r in covered)
        sq = sum(task_draws[r.task][1] if r.task in task_draws else np.full(n_boot, r.quant) for r in covered)
        if ci := _interval(_ratio(sb, sq, False, True), confidence):
            lo, hi, _ = ci
            # the tasks' own intervals, as score differences, combined in quadrature (independent data sets)
            shifts = [x for r in covered if (x := _shift(r)) is not None]
            if shifts and abs(mb) >= _EPS:
                down = math.sqrt(sum(a * a for a, _ in shifts)) / len(covered)
                up = math.sqrt(sum(b * b for _, b in shifts)) / len(covered)
                lo = min(lo, 100.0 * (mq - down) / mb)
                hi = max(hi, 100.0 * (mq + up) / mb)
            proportions = all(0.0 <= v <= 1.0 for r in covered for v in (r.base, r.quant))
            lo, hi = max(0.0, lo), (min(100.0 / mb, hi) if proportions and mb > 0 else hi)
    return RecoveryTable(rows=rows, average_base=mb, average_quant=mq, average_recovery=avg, average_ci_low=lo,
                         average_ci_high=hi, average_tasks=[r.task for r in covered], confidence=confidence)
