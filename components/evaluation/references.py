"""Published baseline scores (a card's baseline column) standing in for evaluating the base model, marked as such.

A reference is a YAML file (shipped ones in references/, named `<base model>.<suite>.yaml`): the base model it is
for, the suite, where the numbers were published, one score per suite task in lm-eval's units, and the number of
documents each task scored (`docs`): published tables carry no stderr, so a proportion's binomial stderr
sqrt(p(1-p)/n) stands in for one, and the recovery interval against it is unpaired (components/recovery.py).

It also names the evaluation that produced each score (`harness`, and per task in `evaluated` the task's name in that
harness, its version where published, its metric and filter; `same_as` where a fork's task was checked to be an
upstream task's definition): the recovery table compares that with what lm-eval ran here and reports a row whose
evaluation differs as NOT COMPARABLE instead of gating it (components/evaluation/results.py: not_comparable).
"""
from __future__ import annotations

import datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from components.evaluation.command import EngineSettings
from components.evaluation.results import Evaluated, TaskScore, binomial_se
from components.evaluation.runner import EvalResult, suite_digest
from components.evaluation.suites import Suite
from components.messages import Checked

REFERENCES = Path(__file__).parent / "references"


class PublishedTask(BaseModel, extra="forbid"):
    """How one published score was produced."""

    task: str = Field(description="the task's name in the harness that ran it")
    same_as: str | None = Field(None, description="the upstream task whose definition it was checked to be (where it says)")
    version: str | None = Field(None, description="the task's version; None: not published")
    metric: str | None = Field(description="None: not published")
    filter: str | None = Field("none", description="None: not published")


class Reference(BaseModel, extra="forbid"):
    model: str  # the base model the scores were published for (Hub id)
    suite: str
    source: str  # where they were published
    harness: str = Field(description="what ran them: `lm-eval <version>` (upstream) or the fork, by name and branch")
    scores: dict[str, float]
    docs: dict[str, int] = Field(default_factory=dict, description="documents per task: the stderr of a published score")
    evaluated: dict[str, PublishedTask] = Field(default_factory=dict,
                                                description="per task: the evaluation that produced its score")

    @model_validator(mode="after")
    def _every_score_says_how(self):
        if missing := sorted(set(self.scores) - set(self.evaluated)):
            raise ValueError(f"no `evaluated` entry (task, version, metric, filter) for {', '.join(missing)}: "
                             "a published score must name the evaluation that produced it")
        return self

    def evaluation(self, task: str) -> Evaluated:
        """The published score's evaluation, in the terms of what lm-eval records here."""
        e = self.evaluated[task]
        return Evaluated(harness=self.harness, task=e.same_as or e.task, version=e.version, docs=self.docs.get(task),
                         metric=e.metric, filter=e.filter)


def names() -> list[str]:
    return sorted(p.stem for p in REFERENCES.glob("*.yaml"))


def load(name: str) -> Reference:
    """A shipped reference by name, or any YAML file by path; ValueError says what is wrong."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else REFERENCES / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no reference baseline {name!r} (shipped: {', '.join(names())}; or a path to a YAML file)")
    try:
        return Reference.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not a valid reference baseline: {str(e).splitlines()[0]}") from None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ValueError(f"{path} is not a valid reference baseline: {where + ': ' if where else ''}{err['msg']}") from None


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
                                higher_is_better=t.higher_is_better, n=ref.docs.get(t.task),
                                n_available=ref.docs.get(t.task), evaluated=ref.evaluation(t.task)) for t in suite.tasks}
    return EvalResult(suite=suite.name, suite_digest=suite_digest(suite), settings=settings, commands=[], scores=scores,
                      wall_s=0.0, output_dir="", date=datetime.date.today().isoformat(), reference=ref.source)


def check(name: str, suite: Suite, settings: EngineSettings, base_name: str | None) -> Checked[EvalResult]:
    """The published baseline `name` standing in for evaluating the base (the value), why it cannot (problems), and
    the note that says it does."""
    try:
        ref = load(name)
    except ValueError as e:
        return Checked(problems=[f"evaluation.reference_baseline: {e}"])
    found = [f"evaluation.reference_baseline {name!r}: {p}" for p in problems(ref, suite, base_name)]
    if found:
        return Checked(problems=found)
    return Checked(as_eval(ref, suite, settings),
                   notes=[f"baseline: published scores ({ref.source}) stand in for evaluating {ref.model}"])
