import pytest

from components.evaluation.results import TaskScore
from components.gate import MIN_AVERAGE_RECOVERY, RTOL, Z_CRIT, gate, task_verdict
from components.recovery import RecoveryRow, table


def row(base, quant, se_b=None, se_q=None, hib=True, task="t"):
    return RecoveryRow(task=task, label=task, metric="acc", base=base, quant=quant, base_stderr=se_b,
                       quant_stderr=se_q, higher_is_better=hib, recovery=None)


def score(task, value, stderr=None, hib=True):
    return TaskScore(task=task, label=task, metric="acc", value=value, stderr=stderr, higher_is_better=hib, n=100)


def tab(pairs, **kw):
    """RecoveryTable from {task: (base, quant)} with the given stderr for both."""
    return table({t: score(t, b, **kw) for t, (b, _) in pairs.items()},
                 {t: score(t, q, **kw) for t, (_, q) in pairs.items()})


def test_defaults_are_vllm_ci_and_llm_compressor():
    assert (RTOL, MIN_AVERAGE_RECOVERY, Z_CRIT) == (0.08, 0.95, 1.645)


@pytest.mark.parametrize("base", [0.5, 0.7, 0.8383, 0.9416, 1.0, 86.75])
def test_exactly_at_the_threshold_passes(base):
    quant = base * (1 - 0.08)
    v = task_verdict(row(base, quant))
    assert v.within_rtol and v.passed
    # the decimal literal of the same threshold (0.7 * 0.92 is not exactly 0.644 in binary) passes too
    assert task_verdict(row(base, float(f"{quant:.12g}"))).passed


def test_just_below_the_threshold_without_stderr_fails():
    v = task_verdict(row(0.7, 0.644 - 1e-6))
    assert not v.within_rtol and not v.passed
    assert v.significant is None and "no stderr" in v.reason and "missing" in v.reason


def test_outside_rtol_but_within_noise_passes():
    # 0.60 -> 0.50 is 83% recovery, but with stderr 0.05 each z = 0.1 / 0.0707 = 1.41 <= 1.645
    v = task_verdict(row(0.60, 0.50, se_b=0.05, se_q=0.05))
    assert not v.within_rtol and v.passed and v.significant is False
    assert v.z == pytest.approx(0.1 / (0.05 * 2 ** 0.5))
    g = gate(table({"t": score("t", 0.60, 0.05)}, {"t": score("t", 0.50, 0.05)}), min_average_recovery=None)
    assert g.passed and g.notes and "within noise" in g.notes[0]


def test_outside_rtol_and_significant_fails():
    v = task_verdict(row(0.60, 0.50, se_b=0.01, se_q=0.01))
    assert v.significant is True and not v.passed
    assert v.z == pytest.approx(0.1 / (0.01 * 2 ** 0.5)) and "significant" in v.reason


def test_z_threshold_is_one_sided_and_strict():
    # z just above / below 1.645 with se_b = 0.1, se_q = 0 -> z = drop / 0.1
    assert not task_verdict(row(1.0, 1.0 - 0.1650, se_b=0.1, se_q=0.0)).passed
    assert task_verdict(row(1.0, 1.0 - 0.1640, se_b=0.1, se_q=0.0)).passed


def test_missing_stderr_counts_as_zero():
    # only the variant has one: z = 0.1 / 0.02 = 5 -> significant; the reason says what was missing
    v = task_verdict(row(0.60, 0.50, se_b=None, se_q=0.02))
    assert not v.passed and v.z == pytest.approx(5.0) and "baseline stderr missing" in v.reason
    # with a large one on the other side it is noise
    v = task_verdict(row(0.60, 0.50, se_b=0.1, se_q=None))
    assert v.passed and v.z == pytest.approx(1.0) and "variant stderr missing" in v.reason


def test_no_stderr_at_all_leaves_the_tolerance_alone():
    assert not task_verdict(row(0.60, 0.50)).passed
    assert not task_verdict(row(0.60, 0.50, se_b=0.0, se_q=0.0)).passed
    assert task_verdict(row(0.60, 0.56)).passed


def test_nan_stderr_is_missing():
    v = task_verdict(row(0.60, 0.50, se_b=float("nan"), se_q=float("nan")))
    assert not v.passed and v.significant is None


def test_zero_baseline():
    # higher is better: nothing to lose (seed 002's Math-lvl-5 is ~0 on both): passes, recovery N/A
    v = task_verdict(row(0.0, 0.0))
    assert v.passed and v.threshold == 0.0 and "baseline 0" in v.reason
    # lower is better with a 0 baseline: any rise is outside the tolerance; noise decides
    assert not task_verdict(row(0.0, 0.01, hib=False)).passed
    assert task_verdict(row(0.0, 0.01, se_b=0.01, se_q=0.01, hib=False)).passed
    # a table whose only task has a 0 baseline has no average recovery: the floor is not checked
    g = gate(tab({"math": (0.0, 0.0)}, stderr=0.0))
    assert g.passed and g.average_recovery is None and g.average_passed is None
    assert any("floor not checked" in n for n in g.notes)


def test_lower_is_better():
    assert task_verdict(row(10.0, 10.8, hib=False)).passed  # exactly base * 1.08
    assert task_verdict(row(10.0, 9.0, hib=False)).passed  # better
    v = task_verdict(row(10.0, 10.9, hib=False))
    assert not v.passed and v.threshold == pytest.approx(10.8) and "<=" in v.reason
    # a perplexity rise inside the noise passes
    assert task_verdict(row(10.0, 11.0, se_b=0.5, se_q=0.5, hib=False)).passed
    assert not task_verdict(row(10.0, 11.0, se_b=0.1, se_q=0.1, hib=False)).passed


def test_negative_baseline_keeps_direction():
    # higher is better, base -1: the tolerance is 0.08 below it, not above
    assert task_verdict(row(-1.0, -1.08)).passed
    assert not task_verdict(row(-1.0, -1.09)).passed


def test_average_floor_fails_a_variant_every_task_of_which_is_within_rtol():
    # every task at 94% recovery: within rtol 0.08, but the average is 94% < 95%
    g = gate(tab({"a": (0.80, 0.752), "b": (0.60, 0.564)}, stderr=0.001))
    assert all(t.passed for t in g.tasks)
    assert not g.passed and g.average_passed is False
    assert g.reasons == ["average recovery 94.00% < 95%"]


def test_average_floor_exactly_at_95_percent_passes():
    g = gate(tab({"a": (0.80, 0.76), "b": (0.60, 0.57)}, stderr=0.001))
    assert g.average_recovery == pytest.approx(95.0)
    assert g.passed and g.average_passed is True and g.reasons == []


def test_seed_002_openllm_v1_passes():
    # the card's OpenLLM v1 rows (base, quant), stderr ~ sqrt(p(1-p)/n) with the tasks' sizes
    rows = {"mmlu": (0.8160, 0.8119, 14042), "mmlu_cot": (0.8658, 0.8592, 14042), "arc": (0.4923, 0.4804, 1172),
            "gsm8k": (0.9416, 0.9401, 1319), "hellaswag": (0.8649, 0.8647, 10042),
            "winogrande": (0.8477, 0.8374, 1267), "truthfulqa": (0.6275, 0.6309, 817)}
    base = {t: score(t, b, (b * (1 - b) / n) ** 0.5) for t, (b, q, n) in rows.items()}
    quant = {t: score(t, q, (q * (1 - q) / n) ** 0.5) for t, (b, q, n) in rows.items()}
    g = gate(table(base, quant))
    assert g.passed and round(g.average_recovery, 1) == 99.4 and not g.notes


def test_one_significant_regression_fails_the_variant_with_its_reason():
    base = {"a": score("a", 0.80, 0.004), "b": score("b", 0.60, 0.004)}
    quant = {"a": score("a", 0.80, 0.004), "b": score("b", 0.50, 0.004)}
    g = gate(table(base, quant), min_average_recovery=None)
    assert not g.passed and len(g.reasons) == 1 and g.reasons[0].startswith("b: ")
    assert [t.passed for t in g.tasks] == [True, False]


def test_strict_mode_and_bad_rtol():
    g = gate(tab({"a": (0.60, 0.50)}, stderr=0.2), z_crit=None, min_average_recovery=None)
    assert not g.passed and g.tasks[0].z is None
    assert gate(tab({"a": (0.60, 0.50)}, stderr=0.2), min_average_recovery=None).passed
    with pytest.raises(ValueError):
        gate(tab({"a": (0.6, 0.6)}), rtol=-0.1)


def test_verdict_serialises():
    g = gate(tab({"a": (0.8, 0.79)}, stderr=0.01))
    again = type(g).model_validate_json(g.model_dump_json())
    assert again == g and again.tasks[0].threshold == pytest.approx(0.736)
