"""Published baselines: the shipped ones match their suites and reproduce their cards' recovery columns."""
from __future__ import annotations

from pathlib import Path

import pytest
from tiny import tiny_spec

from components import recovery
from components.card.render import render
from components.evaluation import references
from components.evaluation.command import EngineSettings
from components.evaluation.suites import load
from test_card import facts

ENGINE = EngineSettings(engine="vllm", platform="cuda", tensor_parallel_size=2)
# Seed card 000's quantized column (Meta-Llama-3.1-70B-Instruct-FP8) and its recovery column, in percent.
SEED_000_FP8 = {"mmlu": (83.73, 99.88), "mmlu_cot_llama": (85.44, 99.34), "arc_challenge_llama": (92.92, 99.64),
                "gsm8k_llama": (94.54, 99.60), "hellaswag": (86.64, 99.87), "winogrande": (85.95, 100.7),
                "truthfulqa_mc2": (60.84, 100.2)}


@pytest.mark.parametrize("name", references.names())
def test_shipped_references_fit_their_suites(name):
    ref = references.load(name)
    model, suite = name.rsplit(".", 1)
    assert ref.suite == suite and ref.model.endswith("/" + model)
    assert references.problems(ref, load(suite), model) == []
    assert all(0 <= v <= 1 for v in ref.scores.values())
    assert set(ref.docs) == set(ref.scores) and all(n > 0 for n in ref.docs.values())  # every score has its stderr
    assert set(ref.evaluated) == set(ref.scores) and ref.harness  # and names the evaluation that produced it


def test_reference_reproduces_the_seed_cards_recovery_column():
    suite = load("openllm-v1-2024")  # seed card 000's own settings: loglikelihood mmlu, add_bos_token, 4096
    base = references.as_eval(references.load("Meta-Llama-3.1-70B-Instruct.openllm-v1-2024"), suite, ENGINE)
    assert base.reference.startswith("neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8 model card")
    assert base.commands == [] and all(s.samples is None for s in base.scores.values())
    # no stderr was published: a binomial one from the task's document count stands in
    mmlu = base.scores["mmlu"]
    assert mmlu.n == 14042 and mmlu.stderr == pytest.approx((0.8383 * (1 - 0.8383) / 14042) ** 0.5)
    quant = {k: s.model_copy(update={"value": SEED_000_FP8[k][0] / 100}) for k, s in base.scores.items()}
    t = recovery.table(base.scores, quant)
    for row in t.rows:
        # The card computed recovery from unrounded scores (60.84 / 60.68 gives 100.26, it prints 100.2): within 0.1.
        assert row.recovery == pytest.approx(SEED_000_FP8[row.task][1], abs=0.1), row.task
    assert 100 * t.average_base == pytest.approx(84.40, abs=0.005) and 100 * t.average_quant == pytest.approx(84.29, abs=0.005)


def test_mismatches_are_named():
    ref = references.load("Meta-Llama-3.1-70B-Instruct.openllm-v1-2024")
    found = references.problems(ref, load("smoke"), "SmolLM2-135M-Instruct")
    assert found[0] == "it is for suite 'openllm-v1-2024', the evaluation runs 'smoke'"
    assert found[1] == "no published score for task(s) qf_facts, qf_arith, qf_prose"
    assert found[2].startswith("task(s) arc_challenge_llama, gsm8k_llama") and found[2].endswith("are not in suite 'smoke'")
    assert found[3] == "it was published for meta-llama/Meta-Llama-3.1-70B-Instruct, the base model is SmolLM2-135M-Instruct"


def test_unknown_or_malformed_reference_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"no reference baseline 'Llama-9-openllm' \(shipped: Llama-3.3-70B-Instruct"):
        references.load("Llama-9-openllm")
    bad = tmp_path / "ref.yaml"
    bad.write_text("model: x\nsuite: smoke\nscores: {qf_facts: high}\n")
    with pytest.raises(ValueError, match=r"ref.yaml is not a valid reference baseline"):
        references.load(str(bad))


def test_card_marks_a_published_baseline(tmp_path):
    f = facts(tmp_path)
    f = f.model_copy(update={"base_eval": f.base_eval.model_copy(update={"reference": "the seed card"})})
    card = render(f)
    assert "it is the published reference (the seed card)" in card
    assert "| Benchmark | Meta-Llama-3.1-70B-Instruct (published) |" in card
    assert "evaluated with the same engine and settings" not in card
    assert "published reference" not in render(facts(tmp_path))


def test_flow_with_a_published_baseline_evaluates_only_the_variant(tiny_model, tmp_path):
    from flows.quantize_variant import quantize_variant
    from prefect_states import task_states

    from components.specs import VariantSpec

    ref = tmp_path / "tiny-llama.smoke.yaml"
    ref.write_text("model: local/tiny-llama\nsuite: smoke\nsource: a table published by the test\nharness: lm-eval 0.4.13\n"
                   "scores: {qf_facts: 0.5, qf_arith: 0.25, qf_prose: 50.0}\nevaluated:\n"
                   "  qf_facts: {task: qf_facts, version: '1', metric: acc}\n"
                   "  qf_arith: {task: qf_arith, version: '1', metric: exact_match, filter: first-number}\n"
                   "  qf_prose: {task: qf_prose, version: '1', metric: word_perplexity}\n")
    spec = VariantSpec.model_validate(tiny_spec(tiny_model, evaluation__seed=4242, evaluation__reference_baseline=str(ref),
                                                stores=[{"kind": "local", "uri": str(tmp_path / "published")}]))
    state = quantize_variant(spec, return_state=True)
    outcome = state.result()
    assert task_states(state.state_details.flow_run_id)["evaluate"] == ["Completed"]  # the variant only
    assert {r.task: r.base for r in outcome.table.rows} == {"qf_facts": 0.5, "qf_arith": 0.25, "qf_prose": 50.0}
    assert not any(r.not_comparable for r in outcome.table.rows)  # the same upstream tasks, versions and metrics
    card = Path(outcome.card).read_text()
    assert "it is the published reference (a table published by the test)" in card
    assert "| Benchmark | tiny-llama (published) |" in card
