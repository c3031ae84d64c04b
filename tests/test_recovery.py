import pytest

from components.evaluation.results import TaskScore
from components.recovery import recovery, table


def s(task, value, hib=True, stderr=0.01):
    return TaskScore(task=task, label=task, metric="acc", value=value, stderr=stderr, higher_is_better=hib, n=100)


def test_recovery_is_quant_over_base_in_percent():
    assert recovery(0.8383, 0.8373) == pytest.approx(99.88, abs=0.01)  # seed 000, MMLU row


def test_lower_is_better_inverts():
    assert recovery(10.0, 12.5, higher_is_better=False) == pytest.approx(80.0)


def test_zero_baseline_is_not_a_ratio():
    # seed 002, Math-lvl-5: 0.17 vs 0.00 -> N/A
    assert recovery(0.0017, 0.0) is None


def test_average_row_is_ratio_of_means_like_the_cards():
    # seed 002, OpenLLM v1: average 77.94 vs 77.49, recovery 99.4%
    base = [0.8160, 0.8658, 0.4923, 0.9416, 0.8649, 0.8477, 0.6275]
    quant = [0.8119, 0.8592, 0.4804, 0.9401, 0.8647, 0.8374, 0.6309]
    t = table({f"t{i}": s(f"t{i}", b) for i, b in enumerate(base)}, {f"t{i}": s(f"t{i}", q) for i, q in enumerate(quant)})
    assert 100 * t.average_base == pytest.approx(77.94, abs=0.005)
    assert 100 * t.average_quant == pytest.approx(77.49, abs=0.005)
    assert round(t.average_recovery, 1) == 99.4
    assert [r.task for r in t.rows] == [f"t{i}" for i in range(7)]


def test_average_skips_lower_is_better_rows():
    t = table({"a": s("a", 0.5), "ppl": s("ppl", 20.0, hib=False)}, {"a": s("a", 0.4), "ppl": s("ppl", 25.0, hib=False)})
    assert t.average_base == 0.5 and t.average_recovery == pytest.approx(80.0)
    assert t.rows[1].recovery == pytest.approx(80.0)


def test_different_tasks_refused():
    with pytest.raises(ValueError, match="different tasks"):
        table({"a": s("a", 0.5)}, {"b": s("b", 0.5)})
