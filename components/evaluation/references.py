"""Published baseline scores (a card's baseline column) standing in for evaluating the base model, marked as such.

A reference is a YAML file (shipped ones in references/, named `<base model>.<suite>.yaml`): the base model it is
for, the suite, where the numbers were published, one score per suite task in lm-eval's units, and the number of
documents each task scored (`docs`): published tables carry no stderr, so a proportion's binomial stderr
sqrt(p(1-p)/n) stands in for one, and the recovery interval against it is unpaired (components/recovery.py).
"""
from __future__ import annotations

import datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

from components.evaluation.command import EngineSettings
from components.evaluation.results import TaskScore
from components.evaluation.runner import EvalResult, suite_digest
from components.evaluation.suites import Suite
from components.recovery import binomial_se

REFERENCES = Path(__file__).parent / "references"


class Reference(BaseModel):
    model: str  # the base model the scores were published for (Hub id)
    suite: str
    source: str  # where they were published
    scores: dict[str, float]
    docs: dict[str, int] = Field(default_factory=dict, description="documents per task: the stderr of a published score")


def names() -> list[str]:
    return sorted(p.stem for p in REFERENCES.glob("*.yaml"))


def load(name: str) -> Reference:
    """A shipped reference by name, or any YAML file by path; ValueError says what is wrong."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else REFERENCES / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no reference baseline {name!r} (shipped: {', '.join(names())}; or a path to a YAML file)")
    try:
        return Reference.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as e:
        raise ValueError(f"{path} is not a valid reference baseline: {str(e).splitlines()[0]}") from None


def problems(ref: Reference, suite: Suite, base_name: str | None) -> list[str]:
    """Why these published scores cannot stand in for this base model on this suite (empty: they can)."""
    out = []
    if ref.suite != suite.name:
        out.append(f"it is for suite {ref.suite!r}, the evaluation runs {suite.name!r}")
    missing = [t.task for t in suite.tasks if t.task not in ref.scores]
    if missing:
        out.append(f"no published score for task(s) {', '.join(missing)}")
    extra = sorted((set(ref.scores) | set(ref.docs)) - {t.task for t in suite.tasks})
    if extra:
        out.append(f"task(s) {', '.join(extra)} are not in suite {suite.name!r}")
    if base_name is not None and ref.model.rsplit("/", 1)[-1] != base_name:
        out.append(f"it was published for {ref.model}, the base model is {base_name}")
    return out


def as_eval(ref: Reference, suite: Suite, settings: EngineSettings) -> EvalResult:
    """The reference in the shape of a measured baseline: no commands, no per-document scores, a binomial stderr
    where the document count is known, `reference` naming the source."""
    scores = {t.task: TaskScore(task=t.task, label=t.label, metric=t.metric, value=ref.scores[t.task],
                                stderr=binomial_se(ref.scores[t.task], ref.docs.get(t.task)),
                                higher_is_better=t.higher_is_better, n=ref.docs.get(t.task)) for t in suite.tasks}
    return EvalResult(suite=suite.name, suite_digest=suite_digest(suite), settings=settings, commands=[], scores=scores,
                      wall_s=0.0, output_dir="", date=datetime.date.today().isoformat(), reference=ref.source)


def inspect(name: str, suite: Suite, settings: EngineSettings, base_name: str | None
            ) -> tuple[EvalResult | None, list[str], list[str]]:
    """The published baseline `name` standing in for evaluating the base, why it cannot (problems), and the note
    that says it does."""
    try:
        ref = load(name)
    except ValueError as e:
        return None, [f"evaluation.reference_baseline: {e}"], []
    found = [f"evaluation.reference_baseline {name!r}: {p}" for p in problems(ref, suite, base_name)]
    if found:
        return None, found, []
    return as_eval(ref, suite, settings), [], [f"baseline: published scores ({ref.source}) stand in for evaluating {ref.model}"]
