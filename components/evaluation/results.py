"""Read lm-eval's results JSON into the scores a card shows."""
from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel

from components.evaluation.suites import Suite


class TaskScore(BaseModel):
    task: str
    label: str
    metric: str
    value: float
    stderr: float | None
    higher_is_better: bool
    n: int | None


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
        n = results.get("n-samples", {}).get(t.task, {}).get("effective") or row.get("sample_len")
        out[t.task] = TaskScore(task=t.task, label=t.label, metric=t.metric, value=float(row[t.result_key]),
                                stderr=stderr, higher_is_better=t.higher_is_better, n=n)
    return out


def parse_dir(output_path: Path, suite: Suite) -> dict[str, TaskScore]:
    """Scores from the newest results file under an `--output_path` folder."""
    files = sorted(Path(output_path).rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"lm-eval wrote no results_*.json under {output_path}")
    return parse(json.loads(files[-1].read_text()), suite)
