"""Run lm_eval in its own process (vLLM in the evaluation environment, hf in this one)."""
from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

from pydantic import BaseModel

from components import artifacts
from components.evaluation import environment
from components.evaluation.command import EngineSettings, build_commands
from components.evaluation.environment import EvaluationError
from components.evaluation.results import TaskScore, parse_dir
from components.evaluation.suites import Suite, suite_digest


class EvalResult(BaseModel):
    suite: str
    suite_digest: str
    settings: EngineSettings
    commands: list[list[str]]
    scores: dict[str, TaskScore]
    wall_s: float
    output_dir: str
    date: str  # when the evaluation finished (ISO date): the card's release date, stable across cached reruns
    reference: str | None = None  # set when published scores stand in for a measured baseline: where they come from

    def artifact_problems(self) -> list[str]:
        """How lm-eval's outputs (results and logged samples) differ from their stamp, or the stamp from this result."""
        return artifacts.problems(Path(self.output_dir), self)


def score_outside_lm_eval(run_dir: Path, suite: Suite, argv: list[str]) -> None:
    """Tasks with a `scorer`: execute the logged completions in the sandbox, write the score into lm-eval's results."""
    ran = argv[argv.index("--tasks") + 1].split(",")
    scored = [t for t in suite.tasks if t.scorer == "humaneval_sandbox" and t.task in ran]
    if not scored:
        return
    from components.evaluation import humaneval

    results_file = sorted(run_dir.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)[-1]
    doc = json.loads(results_file.read_text())
    for t in scored:
        score = humaneval.score_lm_eval_samples(run_dir, task=t.task)
        humaneval.add_to_samples(run_dir, score, metric=t.metric, filter=t.filter)
        humaneval.add_to_results(doc, score, metric=t.metric, filter=t.filter)
    results_file.write_text(json.dumps(doc, indent=2))


def run_suite(model_path: str, suite: Suite, s: EngineSettings, out_dir: Path, log=print,
              gpus: list[int] | None = None) -> EvalResult:
    """Evaluate one model: one lm_eval process per group of tasks that share settings, on `gpus` only when given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include = suite.include_dir
    commands = build_commands(model_path, suite, s, str(include) if include else None)
    scores: dict[str, TaskScore] = {}
    start = time.time()
    for i, argv in enumerate(commands):
        run_dir = out_dir / f"run{i}"
        full = [environment.python_for(s.engine), "-m", "lm_eval", *argv[1:], "--output_path", str(run_dir)]
        log(f"lm_eval ({s.engine}, {s.platform}): tasks {argv[argv.index('--tasks') + 1]}")
        log_file = out_dir / f"run{i}.log"
        rc = environment.run(full, log_file, environment.engine_env(s, gpus), cwd=include or out_dir)
        if rc != 0:
            raise environment.failed(f"lm_eval exited with {rc}", log_file)
        score_outside_lm_eval(run_dir, suite, argv)
        scores.update(parse_dir(run_dir, suite))
    missing = [t.task for t in suite.tasks if t.task not in scores]
    if missing:
        raise EvaluationError(f"lm-eval results lack tasks {missing}")
    return EvalResult(suite=suite.name, suite_digest=suite_digest(suite), settings=s, commands=commands,
                      scores=scores, wall_s=round(time.time() - start, 1), output_dir=str(out_dir),
                      date=datetime.date.today().isoformat())
