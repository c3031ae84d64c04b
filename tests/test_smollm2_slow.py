"""The README's main job on the real embedded default (SmolLM2-135M-Instruct): minutes on CPU, so marked slow."""
from __future__ import annotations

from pathlib import Path

import pytest

from components.specs import VariantSpec


@pytest.mark.slow
def test_embedded_default_end_to_end():
    from flows.quantize_variant import quantize_variant

    outcome = quantize_variant(VariantSpec())
    assert outcome.engine == "vllm"
    rows = {r.task: r for r in outcome.table.rows}
    assert rows["qf_recall"].base > 0.5, "SmolLM2-135M knows most of the shipped facts and sequences"
    assert 1 < rows["qf_prose"].base < 1000, "real model, not a random one"
    assert 80 < rows["qf_prose"].recovery <= 101
    assert outcome.gate.state.value in ("PASSED", "FAILED"), outcome.gate.reasons  # the demo suite decides
    card = Path(outcome.card).read_text()
    assert "SmolLM2-135M-Instruct-quantized.w8a8" in card and "GPTQModifier" in card


@pytest.mark.slow
def test_a_damaged_variant_fails_the_same_gate(tmp_path):
    """The control: the embedded default's base with 4-bit embeddings (tests/damaged.py), evaluated beside its base
    on the same suite, engine and settings as `quantflow run`, judged by the same gate: FAILED."""
    from damaged import damage_embeddings

    from components.evaluation.runner import run_suite
    from components.gate import State, gate
    from components.models import resolve
    from components.preflight import preflight
    from components.recovery import table

    spec = VariantSpec()
    plan = preflight(spec)
    base = resolve(spec.base.source, spec.base.revision)
    damaged = damage_embeddings(Path(base.path), tmp_path / "damaged")
    base_eval = run_suite(base.path, plan.suite, plan.engine, tmp_path / "eval-base")
    damaged_eval = run_suite(str(damaged), plan.suite, plan.engine, tmp_path / "eval-damaged")
    verdict = gate(table(base_eval.scores, damaged_eval.scores), rtol=spec.evaluation.rtol,
                   min_average_recovery=spec.evaluation.min_average_recovery)
    print("\n".join(f"{t.label}: {t.state.value}: {t.reason}" for t in verdict.tasks))
    assert verdict.state == State.FAILED, verdict.reasons
