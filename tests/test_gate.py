import numpy as np
import pytest

from components.card.render import headline
from components.evaluation import references
from components.evaluation.command import EngineSettings
from components.evaluation.results import DocScores, Evaluated, TaskScore, not_comparable
from components.evaluation.suites import load
from components.gate import MIN_AVERAGE_RECOVERY, RTOL, State, decide, docs_needed, gate, task_verdict
from components.recovery import CONFIDENCE, RecoveryRow, paired_recovery, table


def row(recovery, low=None, high=None, se=None, n=None, log_scale=False):
    return RecoveryRow(task="t", label="t", metric="acc", base=0.5, quant=0.5, base_stderr=None, quant_stderr=None,
                       higher_is_better=True, recovery=recovery, ci_low=low, ci_high=high, recovery_se=se, n_docs=n,
                       method="m", log_scale=log_scale)


def score(task, value, stderr=None, n=None, samples=None, hib=True, metric="acc"):
    return TaskScore(task=task, label=task, metric=metric, value=value, stderr=stderr, higher_is_better=hib, n=n,
                     samples=samples)


def docs(task, values):
    return DocScores(ids=[f"{task}/{i}" for i in range(len(values))], values=[float(v) for v in values])


def paired(pairs: dict[str, tuple[list, list]]):
    """A table from per-document scores {task: (base docs, variant docs)}."""
    return table({t: score(t, float(np.mean(b)), samples=docs(t, b), n=len(b)) for t, (b, _) in pairs.items()},
                 {t: score(t, float(np.mean(q)), samples=docs(t, q), n=len(q)) for t, (_, q) in pairs.items()})


def flips(n, right, lost, gained=0):
    """Base right on `right` of n documents; the variant loses `lost` of them and gains `gained` others."""
    b = [1] * right + [0] * (n - right)
    q = [0] * lost + [1] * (right - lost) + [1] * gained + [0] * (n - right - gained)
    return b, q


def test_defaults_are_vllm_ci_and_llm_compressor():
    assert (RTOL, MIN_AVERAGE_RECOVERY, CONFIDENCE) == (0.08, 0.95, 0.90)


def test_three_states_from_the_interval():
    assert decide(92.0, 99.0, 92.0) == State.PASSED  # lower bound exactly at the floor
    assert decide(93.0, 99.0, 92.0) == State.PASSED
    assert decide(80.0, 91.99, 92.0) == State.FAILED
    assert decide(90.0, 95.0, 92.0) == State.INCONCLUSIVE
    assert decide(None, None, 92.0) == State.INCONCLUSIVE
    v = task_verdict(row(93.0, 90.0, 96.0, se=1.8, n=100))
    assert v.state == State.INCONCLUSIVE and v.docs_needed and "documents would decide it" in v.reason


def test_docs_needed_would_decide():
    # 0.60 -> 0.57 over 100 documents (95%), 3 lost, none gained: paired interval straddles 92%
    b, q = flips(100, 60, 3)
    t = paired({"a": (b, q)})
    v = gate(t, min_average_recovery=None).tasks[0]
    assert v.state == State.INCONCLUSIVE and v.docs_needed > 100
    k = -(-int(1.3 * v.docs_needed) // 100)  # the same documents, k times as many of them
    bigger = paired({"a": (b * k, q * k)})
    assert gate(bigger, min_average_recovery=None).tasks[0].state == State.PASSED
    assert docs_needed(95.0, 1.0, 100, 95.0, 0.9) is None  # exactly on the floor: no size decides


def test_small_suite_large_drop_is_not_excused_as_noise():
    # the case: n=30, 0.70 -> 0.55 used to pass "within noise"
    b, q = flips(30, 21, 5)  # 0.70 -> 0.533
    v = gate(paired({"a": (b, q)}), min_average_recovery=None)
    assert v.tasks[0].state == State.FAILED and v.state == State.FAILED
    # the same drop with only stderrs (unpaired): at best inconclusive, never passed
    t = table({"a": score("a", 0.70, stderr=0.084)}, {"a": score("a", 0.55, stderr=0.091)})
    assert gate(t, min_average_recovery=None).state != State.PASSED


def test_paired_decides_where_unpaired_cannot():
    # 0.60 -> 0.59 over 400 documents: 4 of the base's right answers lost. Paired: PASSED. The same scores
    # treated as independent samples (binomial stderrs): INCONCLUSIVE.
    b, q = flips(400, 240, 4)
    assert gate(paired({"a": (b, q)})).state == State.PASSED
    unpaired = table({"a": score("a", 0.60, n=400)}, {"a": score("a", 0.59, n=400)})
    g = gate(unpaired)
    assert g.tasks[0].state == State.INCONCLUSIVE and g.tasks[0].method.startswith("unpaired")


def test_na_rows_are_reported_not_gated():
    # seed 002, Math-lvl-5: 0.17 vs 0.00 -> N/A, and the other task decides
    b, q = flips(400, 240, 0)
    t = table({"math": score("math", 0.0017, n=1324), "a": score("a", 0.6, samples=docs("a", b))},
              {"math": score("math", 0.0, n=1324), "a": score("a", 0.6, samples=docs("a", q))})
    g = gate(t)
    assert g.tasks[0].state == State.NA and g.state == State.PASSED
    assert any("not gated" in n for n in g.notes) and not any("math" in r for r in g.reasons)
    only_na = gate(table({"m": score("m", 0.0, n=10)}, {"m": score("m", 0.0, n=10)}))
    assert only_na.state == State.INCONCLUSIVE and "no task could be gated" in only_na.reasons[-1]


def test_identical_answers_pass_only_on_enough_documents():
    # no document differs: the bootstrap alone would say [100%, 100%] on any number of documents
    small = gate(paired({"a": flips(30, 15, 0)}), min_average_recovery=None).tasks[0]
    assert small.state == State.INCONCLUSIVE and "none differing" in small.reason
    assert gate(paired({"a": flips(400, 240, 0)}), min_average_recovery=None).state == State.PASSED


def test_overall_state():
    ok, bad = flips(400, 240, 0), flips(400, 240, 60)  # 100% and 75%
    grey = flips(100, 60, 3)  # 95% on 100 documents: inconclusive
    assert gate(paired({"a": ok, "b": ok})).state == State.PASSED
    assert gate(paired({"a": ok, "b": bad})).state == State.FAILED
    assert gate(paired({"a": ok, "b": grey}), min_average_recovery=None).state == State.INCONCLUSIVE
    assert gate(paired({"a": bad, "b": grey})).state == State.FAILED  # a failure outweighs the doubt
    assert task_verdict(row(99.0)).state == State.INCONCLUSIVE  # no interval: a point proves nothing


def test_average_floor_fails_a_variant_every_task_of_which_is_within_rtol():
    # every task at 94% recovery: within rtol 0.08, but the average is shown to be below 95%
    g = gate(paired({"a": flips(4000, 2000, 120), "b": flips(4000, 3000, 180)}))
    assert all(t.state == State.PASSED for t in g.tasks)
    assert g.average_state == State.FAILED and g.state == State.FAILED
    assert g.reasons[0].startswith("average recovery (all 2 tasks): FAILED: 94.00%")


def test_perplexity_is_judged_as_likelihood_kept():
    rng = np.random.default_rng(0)
    words = rng.integers(50, 100, 24).astype(float)
    ll_b = -4.0 * words

    def side(ll):
        samples = DocScores(ids=[f"p/{i}" for i in range(24)], values=list(ll), weights=list(words))
        return {"p": score("p", float(np.exp(-ll.sum() / words.sum())), samples=samples, hib=False, metric="word_perplexity")}

    def run(per_word_loss):
        return gate(table(side(ll_b), side(ll_b - per_word_loss * words - rng.normal(0, 0.01, 24) * words)))

    # perplexity +8% (the old linear threshold) keeps 1/1.08 = 92.6% of the likelihood: passes
    assert run(np.log(1.08)).state == State.PASSED
    # +11.4% (the demo's 73.29 -> 81.65) keeps 89.8%: fails
    v = run(np.log(81.65 / 73.29))
    assert v.state == State.FAILED and "likelihood kept" in v.reasons[0]


def test_bad_rtol():
    with pytest.raises(ValueError):
        gate(paired({"a": flips(10, 5, 0)}), rtol=-0.1)


def test_verdict_serialises():
    g = gate(paired({"a": flips(400, 240, 4)}))
    again = type(g).model_validate_json(g.model_dump_json())
    assert again == g and again.tasks[0].floor == pytest.approx(92.0) and again.passed


def test_a_failed_variant_never_has_a_bare_100_percent_headline():
    # the case: accuracy untouched (100%), perplexity clearly worse
    words = [60.0] * 24
    ll_b = [-4.0 * w for w in words]
    ll_q = [v - 0.11 * w + 0.01 * w * (i % 3) for i, (v, w) in enumerate(zip(ll_b, words, strict=True))]
    acc = flips(30, 15, 0)
    base = {"facts": score("facts", 0.5, samples=docs("facts", acc[0])),
            "prose": score("prose", 73.29, hib=False, metric="word_perplexity",
                           samples=DocScores(ids=[f"prose/{i}" for i in range(24)], values=ll_b, weights=words))}
    quant = {"facts": score("facts", 0.5, samples=docs("facts", acc[1])),
             "prose": score("prose", 81.65, hib=False, metric="word_perplexity",
                            samples=DocScores(ids=[f"prose/{i}" for i in range(24)], values=ll_q, weights=words))}
    t = table(base, quant)
    g = gate(t)
    assert t.average_recovery == pytest.approx(100.0) and g.state == State.FAILED
    text = headline(t, g)
    assert text.startswith("100.00% recovery over accuracy tasks, 1 of 2, 90% interval [") and text.endswith("gate FAILED")


# --- seed card 002 through the published-baseline path --------------------------------------------------------

# Card 002's quantized column, in the order of its table (and of the reference files' scores).
SEED_002_V2 = [0.5159, 0.9068, 0.6254, 0.0, 0.4644, 0.4434]  # MMLU-Pro, IFEval, BBH, Math-lvl-5, GPQA, MuSR
SEED_002_V1 = [0.8119, 0.8592, 0.4804, 0.9401, 0.8647, 0.8374, 0.6309]  # MMLU, MMLU-CoT, ARC, GSM-8K, HS, WG, TQA
ENGINE = EngineSettings(engine="vllm", platform="cuda")


def seed_002(suite: str, quant_column: list[float]):
    """Card 002's quantized column against its published baseline: binomial stderrs from the document counts."""
    ref = references.load(f"Llama-3.3-70B-Instruct.{suite}")
    quant_scores = dict(zip(ref.scores, quant_column, strict=True))
    base = references.as_eval(ref, load(suite), ENGINE).scores
    quant = {k: s.model_copy(update={"value": quant_scores[k], "stderr": None}) for k, s in base.items()}
    return gate(table(base, quant))


def test_card_002_openllm_v2_no_longer_fails_on_its_na_row():
    g = seed_002("openllm-v2", SEED_002_V2)
    states = {t.task: t.state for t in g.tasks}
    assert states["leaderboard_math_hard"] == State.NA
    assert g.state != State.FAILED and State.FAILED not in states.values()
    assert states["leaderboard_mmlu_pro"] == State.PASSED  # 12032 documents decide a 99.4% recovery
    assert all(t.method.startswith("unpaired") for t in g.tasks if t.state != State.NA)
    assert round(g.average_recovery, 1) == 99.7


def test_card_002_openllm_v1_is_never_failed():
    g = seed_002("openllm-v1", SEED_002_V1)
    assert g.state != State.FAILED and round(g.average_recovery, 1) == 99.4
    assert {t.label for t in g.tasks if t.state == State.PASSED} >= {"MMLU (5-shot)", "Hellaswag (10-shot)"}


# --- issue 23: verdicts that were wrong ------------------------------------------------------------------------

def measured(s: TaskScore, value: float, task: str | None = None) -> TaskScore:
    """The variant's score as lm-eval 0.4.13 records it here: upstream task, its version, the documents it scored."""
    t = next(t for name in ("openllm-v1", "openllm-v2") for t in load(name).tasks if t.task == (task or s.task))
    return s.model_copy(update={"value": value, "stderr": None, "evaluated": Evaluated(
        harness="lm-eval 0.4.13", task=t.task, version="1", docs=s.n, metric=t.metric, filter=t.filter)})


def card_002_v1(arc: float):
    ref = references.load("Llama-3.3-70B-Instruct.openllm-v1")
    base = references.as_eval(ref, load("openllm-v1"), ENGINE).scores
    column = dict(zip(ref.scores, SEED_002_V1, strict=True)) | {"arc_challenge_llama": arc}
    return gate(table(base, {k: measured(s, column[k]) for k, s in base.items()}))


@pytest.mark.parametrize("arc", [0.92, 0.48])  # faithful on upstream's task (was 186.9% PASSED), half of it lost
def test_card_002_arc_against_the_forks_task_is_not_comparable(arc):
    g = card_002_v1(arc)
    row = next(t for t in g.tasks if t.task == "arc_challenge_llama")
    assert row.state == State.NOT_COMPARABLE and g.state != State.PASSED
    assert "arc_challenge_llama_3.1_instruct vs lm-eval 0.4.13's arc_challenge_llama" in row.reason
    assert "filter multi_choice vs strict_match" in row.reason
    assert "arc_challenge_llama" not in g.average_covers and any("ARC Challenge (0-shot): NOT COMPARABLE" in n for n in g.notes)
    # the same upstream task on both sides compares (hellaswag: the same name, documents, metric and filter)
    assert next(t for t in g.tasks if t.task == "hellaswag").state in (State.PASSED, State.INCONCLUSIVE)


def test_a_comparable_row_differs_on_version_or_documents():
    e = Evaluated(harness="lm-eval 0.4.13", task="hellaswag", version="1", docs=10042, metric="acc_norm")
    assert not_comparable(e, e) is None and not_comparable(None, e) is None
    assert not_comparable(e, e.model_copy(update={"version": "2"})) == "baseline and variant differ: task version 1 vs 2"
    assert "10042 vs 500 documents" in not_comparable(e, e.model_copy(update={"docs": 500}))
    assert not_comparable(e.model_copy(update={"version": None}), e) is None  # a version nobody published


def test_an_implausible_recovery_is_flagged_never_passed():
    b, q = flips(2000, 1000, 0, 300)  # the variant "gains" 30% of the base's accuracy
    v = gate(paired({"a": (b, q)}), min_average_recovery=None)
    assert v.tasks[0].ci_low > 105 and v.tasks[0].state == State.INCONCLUSIVE and v.state == State.INCONCLUSIVE
    assert "flagged for review" in v.tasks[0].reason


@pytest.mark.parametrize("n", [5, 30])
def test_one_gained_document_does_not_pass(n):
    b, q = flips(n, n // 2, 0, 1)  # was PASSED [100%, 300%] (5) and [100%, 122.2%] (30): the bootstrap collapsed
    v = gate(paired({"a": (b, q)}), min_average_recovery=None).tasks[0]
    assert v.state == State.INCONCLUSIVE and v.ci_low < 92 and "(1 gained, 0 lost)" in v.method


def test_task_bounds_stay_within_what_the_score_can_reach():
    # 4 documents of partial credit, none differing: the rule-of-three bound was [-49.8%, 249.8%]
    t = paired({"a": ([0.5] * 4, [0.5] * 4)})
    assert (t.rows[0].ci_low, t.rows[0].ci_high) == pytest.approx((0.0, 200.0))
    # pass/fail on 4 documents, 2 right each: within [0%, 200%]
    r = paired({"a": flips(4, 2, 0)}).rows[0]
    assert 0.0 <= r.ci_low and r.ci_high <= 200.0


def test_documents_needed_are_the_fewest_that_decide():
    # 30 facts, 26 right, none differing: the bound falls as 1/n, so 37 documents decide (the old 1/sqrt(n) said 63)
    b, q = flips(30, 26, 0)
    v = gate(paired({"a": (b, q)}), min_average_recovery=None).tasks[0]
    assert v.state == State.INCONCLUSIVE and v.docs_needed == 37
    assert paired_recovery(0, 0, 37, 37 * 26 / 30)[0] >= 92 > paired_recovery(0, 0, 36, 36 * 26 / 30)[0]


def test_documents_needed_are_capped_at_the_task():
    b, q = flips(30, 8, 1)  # the old demo's arithmetic: 8 right, one lost
    base = {"a": score("a", 8 / 30, samples=docs("a", b), n=30).model_copy(update={"n_available": 30})}
    quant = {"a": score("a", 7 / 30, samples=docs("a", q), n=30).model_copy(update={"n_available": 30})}
    v = gate(table(base, quant), min_average_recovery=None).tasks[0]
    assert v.state == State.INCONCLUSIVE and v.docs_needed > 30 and v.docs_available == 30
    assert f"this task cannot decide it at this difference: 30 documents exist, about {v.docs_needed} would be needed" in v.reason


def test_a_published_baseline_says_what_would_decide():
    # card 002's MuSR (756 documents): 44.35 -> 44.34 unpaired asked for 1087 documents of 756
    ref = references.load("Llama-3.3-70B-Instruct.openllm-v2")
    base = references.as_eval(ref, load("openllm-v2"), ENGINE).scores
    quant = {k: measured(s, v) for (k, s), v in zip(base.items(), SEED_002_V2, strict=True)}
    g = gate(table(base, quant))
    musr = next(t for t in g.tasks if t.task == "leaderboard_musr")
    assert musr.state == State.INCONCLUSIVE and musr.unpaired
    assert "this task cannot decide it at this difference: 756 documents exist" in musr.reason
    assert "evaluating the base here (paired, over the same documents)" in musr.reason
    assert "unpaired against a published baseline" in musr.reason
    assert any(n.startswith("unpaired intervals: the baseline is published") for n in g.notes)


def test_a_reference_must_name_its_evaluation(tmp_path):
    bad = tmp_path / "ref.yaml"
    bad.write_text("model: x\nsuite: smoke\nsource: s\nharness: lm-eval 0.4.13\nscores: {qf_facts: 0.5}\n")
    with pytest.raises(ValueError, match=r"no `evaluated` entry .* for qf_facts: a published score must name the evaluation"):
        references.load(str(bad))
