"""Read lm-eval's results JSON into the scores a card shows, and its per-document samples into paired statistics."""
from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel, Field

from components.evaluation.suites import Suite, SuiteTask


class DocScores(BaseModel):
    """One model's per-document scores on one task (lm-eval `--log_samples`), keyed so that base and variant pair.

    `ids` are `<subtask>/<doc_id>` (a group's documents come from its leaf tasks); `values` are the per-document
    metric (0/1 for accuracy; the log-likelihood for perplexity-type metrics, whose `weights` are the words or bytes
    it covers; weights are None when every document counts once).
    """

    ids: list[str]
    values: list[float]
    weights: list[float] | None = None
    pooled: bool = Field(True, description="the task's score pools its documents (weight by size); False: a group "
                                           "averaging its subtasks' means with equal weight")


class Evaluated(BaseModel):
    """The evaluation that produced a score: two scores compare only when it is the same task definition over the
    same documents, scored the same way (a published baseline names it in its reference file)."""

    harness: str = Field(description="upstream `lm-eval <version>`, or the fork that ran it")
    task: str = Field(description="the task's name in that harness")
    version: str | None = Field(None, description="the task's version (lm-eval's `versions`); None: not published")
    docs: int | None = Field(None, description="documents scored (lm-eval's n-samples); None: not published")
    metric: str | None = Field(description="None: not published")
    filter: str | None = Field("none", description="None: not published")


def not_comparable(base: Evaluated | None, quant: Evaluated | None) -> str | None:
    """Why two scores are not of the same evaluation (None: they are, as far as both sides say). A fork's task is
    its own definition even where an upstream task took its name: names must match (or the reference says `same_as`)."""
    if base is None or quant is None:
        return None
    differ = []
    if base.task != quant.task:
        differ.append(f"task {base.harness}'s {base.task} vs {quant.harness}'s {quant.task}")
    elif base.version is not None and quant.version is not None and base.version != quant.version:
        differ.append(f"task version {base.version} vs {quant.version}")
    if base.docs is not None and quant.docs is not None and base.docs != quant.docs:
        differ.append(f"{base.docs} vs {quant.docs} documents")
    for what, b, q in (("metric", base.metric, quant.metric), ("filter", base.filter, quant.filter)):
        if b is not None and q is not None and b != q:
            differ.append(f"{what} {b} vs {q}")
    return "baseline and variant differ: " + "; ".join(differ) if differ else None


def _version(v) -> str | None:
    """lm-eval writes a task version as a number or a string: one spelling (1 and 1.0 are the same version)."""
    if v is None:
        return None
    try:
        return f"{float(v):g}"
    except (TypeError, ValueError):
        return str(v)


class TaskScore(BaseModel):
    task: str
    label: str
    metric: str
    value: float
    stderr: float | None
    higher_is_better: bool
    n: int | None
    samples: DocScores | None = None  # None when lm-eval logged none for this metric (published baselines, scorers)
    n_available: int | None = Field(None, description="documents the task has (lm-eval's n-samples original)")
    evaluated: Evaluated | None = None  # what produced it; None: not recorded (an older result)


def binomial_se(p: float, n: int | None) -> float | None:
    """Standard error of a proportion over n documents (None when it is not a proportion or n is unknown)."""
    return math.sqrt(p * (1 - p) / n) if n and 0.0 <= p <= 1.0 else None


def parse(results: dict, suite: Suite) -> dict[str, TaskScore]:
    """Scores for the suite's tasks found in one lm-eval results document."""
    out = {}
    per_task = results.get("results", {})
    for t in suite.tasks:
        if t.task not in per_task:
            continue
        row = per_task[t.task]
        if t.result_key not in row:
            raise KeyError(f"lm-eval results for {t.task} have no {t.result_key!r} (keys: {sorted(k for k in row if ',' in k)})")
        stderr = row.get(f"{t.metric}_stderr,{t.filter}")
        stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
        counts = _counts(results, t.task)
        n = counts[0] or row.get("sample_len")
        harness = f"lm-eval {results['lm_eval_version']}" if results.get("lm_eval_version") else "lm-eval"
        evaluated = Evaluated(harness=harness, task=t.task, version=_version(results.get("versions", {}).get(t.task)),
                              docs=n, metric=t.metric, filter=t.filter)
        out[t.task] = TaskScore(task=t.task, label=t.label, metric=t.metric, value=float(row[t.result_key]),
                                stderr=stderr, higher_is_better=t.higher_is_better, n=n, n_available=counts[1],
                                evaluated=evaluated)
    return out


def _counts(results: dict, task: str) -> tuple[int | None, int | None]:
    """(documents scored, documents the task has) from n-samples; a group's are its leaves' sums."""
    per = results.get("n-samples", {})
    if task in per:
        return per[task].get("effective"), per[task].get("original")
    leaves = leaf_tasks(results, task)
    if leaves == [task] or not all(leaf in per for leaf in leaves):
        return None, None
    return (sum(per[leaf].get("effective") or 0 for leaf in leaves) or None,
            sum(per[leaf].get("original") or 0 for leaf in leaves) or None)


def leaf_tasks(results: dict, task: str) -> list[str]:
    """The tasks whose samples make up `task`: itself, or a group's leaves (results' `group_subtasks`, recursively)."""
    children = results.get("group_subtasks", {}).get(task)
    if not children:
        return [task]
    return [leaf for child in children for leaf in leaf_tasks(results, child)]


def read_samples(files: list[Path], t: SuiteTask) -> tuple[list[str], list[float], list[float]] | None:
    """(doc ids, values, weights) of one leaf task's metric under the task's filter; None when not logged."""
    ids, values, weights = [], [], []
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                doc = json.loads(line)
                if doc.get("filter", "none") != t.filter or t.metric not in doc:
                    continue
                v = doc[t.metric]
                value, weight = (v[0], v[1]) if isinstance(v, (list, tuple)) else (v, 1.0)
                ids.append(str(doc["doc_id"]))
                values.append(float(value))
                weights.append(float(weight))
    return (ids, values, weights) if ids else None


def samples_for(run_dir: Path, date_id: str, results: dict, t: SuiteTask, reported: float) -> DocScores | None:
    """Per-document scores of one suite task from `samples_<leaf>_<date_id>.jsonl` (the files written with the
    results file read), or None when any leaf logged none.

    A group's score is checked against its leaves: pooled over documents, or the mean of its subtasks' means;
    the aggregation that reproduces lm-eval's reported value is the one the statistics use.
    """
    ids, values, weights, strata = [], [], [], []
    for leaf in leaf_tasks(results, t.task):
        got = read_samples(sorted(run_dir.glob(f"samples_{leaf}_{date_id}.jsonl")), t)
        if got is None:
            return None
        ids += [f"{leaf}/{i}" for i in got[0]]
        values += got[1]
        weights += got[2]
        strata.append((sum(got[1]), sum(got[2])))
    pooled = True
    if len(strata) > 1 and t.metric not in LOG_SCALE:
        by_size = sum(s for s, _ in strata) / sum(w for _, w in strata)
        equal = sum(s / w for s, w in strata) / len(strata)
        pooled = abs(by_size - reported) <= abs(equal - reported)
    unit = all(w == 1.0 for w in weights)
    return DocScores(ids=ids, values=values, weights=None if unit else weights, pooled=pooled)


# Perplexity-type metrics: what one document's logged value is and how lm-eval aggregates it; the statistics work
# on the mean log-likelihood per unit (word, byte, or document), which each metric maps to here.
LOG_SCALE = {
    "word_perplexity": lambda v: -math.log(v),
    "byte_perplexity": lambda v: -math.log(v),
    "perplexity": lambda v: -math.log(v),
    "bits_per_byte": lambda v: -v * math.log(2),
}


def parse_dir(output_path: Path, suite: Suite) -> dict[str, TaskScore]:
    """Scores from the newest results file under an `--output_path` folder, each with its per-document samples
    when lm-eval logged them (`--log_samples`)."""
    files = sorted(Path(output_path).rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"lm-eval wrote no results_*.json under {output_path}")
    results = json.loads(files[-1].read_text())
    scores = parse(results, suite)
    by_name = {t.task: t for t in suite.tasks}
    date_id = files[-1].stem.removeprefix("results_")
    for name, s in scores.items():
        s.samples = samples_for(files[-1].parent, date_id, results, by_name[name], s.value)
    return scores
