"""A recorded variant without running the flow: smoke-suite evaluations, serving results, a `VariantRecord`."""
from __future__ import annotations

from pathlib import Path

from components import recipes, tracking
from components.evaluation.command import EngineSettings
from components.evaluation.results import TaskScore
from components.evaluation.runner import EvalResult
from components.evaluation.serving import ServingResult, Speed
from components.evaluation.suites import SUITES, load
from components.gate import gate
from components.models import ModelRef
from components.outcomes import Checkpoint, VariantRecord
from components.recovery import table
from components.specs import VariantSpec

CARD = "---\nbase_model: local/tiny\ntags:\n- quantflow\n---\n\n# tiny-w8a8\n\nThe card.\n"


def evaluation(values: list[float], output_dir: Path | str = "") -> EvalResult:
    suite = load("smoke")
    scores = {t.task: TaskScore(task=t.task, label=t.label, metric=t.metric, value=v, stderr=0.02,
                                higher_is_better=t.higher_is_better, n=30) for t, v in zip(suite.tasks, values, strict=True)}
    return EvalResult(suite="smoke", suite_digest="f" * 64, settings=EngineSettings(engine="vllm", platform="cpu"),
                      commands=[], scores=scores, wall_s=1.0, output_dir=str(output_dir), date="2026-11-22")


def served(tok_s: float, mb: float) -> ServingResult:
    return ServingResult(output_tok_s=tok_s, total_tok_s=2 * tok_s, requests_s=1.0, ttft_median_ms=200.0, ttft_p99_ms=250.0,
                         tpot_median_ms=40.0, completed=16, failed=0, engine_peak_mb=3000.0, weights_gib=None,
                         checkpoint_mb=mb, commands=[["vllm", "serve", "m"], ["vllm", "bench", "serve"]], wall_s=60.0)


def variant_record(folder: Path, base_name: str, name: str, values=(0.78, 0.27, 21.0), speed: bool = True) -> VariantRecord:
    """A w8a8 variant of `base_name` whose card, recipe and lm-eval output live in `folder`."""
    (folder / "README.md").write_text(CARD)
    (folder / "recipe.yaml").write_text("quant_stage: {}\n")
    (folder / "lm_eval").mkdir(exist_ok=True)
    (folder / "lm_eval" / "results.json").write_text("{}\n")
    base_eval, variant_eval = evaluation([0.8, 0.3, 20.0]), evaluation(list(values), folder / "lm_eval")
    t = table(base_eval.scores, variant_eval.scores)
    return VariantRecord(
        name=name, spec=VariantSpec(), scheme=recipes.load("w8a8-int8"),
        base=ModelRef(source=f"local/{base_name}", name=base_name, path=str(folder), digest="d" * 64), calibration=None,
        checkpoint=Checkpoint(name=name, path=str(folder), digest="c" * 64), base_eval=base_eval,
        suite=load("smoke"), suite_file=SUITES / "smoke.yaml", variant_eval=variant_eval, table=t, gate=gate(t),
        versions=tracking.versions(),
        speed=Speed(base=served(80.0, 260.0), variant=served(100.0, 140.0)) if speed else None)
