"""The seed cards' recovery columns, recomputed from their own score columns (tests/data/seed_cards.yaml).

Two readings of a printed recovery: *exact*, the ratio of the printed scores rounded as the card rounds it (what a
reader checks), and *possible*, some unrounded scores that print as the card's (each within +-0.005) give a ratio
that prints as the card's recovery. Card 000 follows from its scores (two rows only through the scores' rounding);
card 002 has five rows that do not follow exactly, three of which no rounding explains.
"""
from pathlib import Path

import pytest
import yaml

from components.recovery import recovery

CARDS = yaml.safe_load((Path(__file__).parent / "data" / "seed_cards.yaml").read_text())
HALF_CENT = 0.005  # the cards print scores to two decimals


def rows(card: str, with_na: bool = False):
    return [r for r in CARDS[card] if with_na or r[4] != "N/A"]


def exact(base: float, quant: float, printed: str) -> bool:
    decimals = len(printed.partition(".")[2])
    return f"{recovery(base, quant):.{decimals}f}" == printed


def possible(base: float, quant: float, printed: str) -> bool:
    half = 0.5 * 10 ** -len(printed.partition(".")[2])
    lowest = 100 * (quant - HALF_CENT) / (base + HALF_CENT)
    highest = 100 * (quant + HALF_CENT) / (base - HALF_CENT)
    return lowest <= float(printed) + half and highest >= float(printed) - half


def not_following(card: str, rule) -> list[str]:
    return [r[1] for r in rows(card) if not rule(r[2], r[3], r[4])]


def test_card_000_recovery_follows_from_its_scores():
    assert not_following("000", possible) == []
    assert not_following("000", exact) == ["TruthfulQA (0-shot, mc2)", "Average"]  # 100.26 and 99.87 as printed


def test_card_002_rows_whose_recovery_does_not_follow_from_its_scores():
    assert not_following("002", exact) == ["TruthfulQA (0-shot, mc2)", "MMLU-Pro (5-shot)", "IFEval (0-shot)",
                                           "GPQA (0-shot)", "Thai MMLU (5-shot)"]
    # GPQA (100.74 from the printed scores) and Thai (99.26) can come from unrounded scores; these three cannot
    assert not_following("002", possible) == ["TruthfulQA (0-shot, mc2)", "MMLU-Pro (5-shot)", "IFEval (0-shot)"]


@pytest.mark.parametrize("card", ["000", "002"])
def test_the_average_rows_are_the_means_of_their_sections(card):
    sections: dict[str, list] = {}
    for section, label, base, quant, _ in rows(card, with_na=True):
        sections.setdefault(section, []).append((label, base, quant))
    checked = 0
    for section, entries in sections.items():
        avg = [e for e in entries if e[0] == "Average"]
        if not avg:
            continue
        tasks = [e for e in entries if e[0] != "Average"]
        for col in (1, 2):
            mean = sum(e[col] for e in tasks) / len(tasks)
            assert abs(mean - avg[0][col]) <= 2 * HALF_CENT, (section, col, mean)
        checked += 1
    assert checked == {"000": 1, "002": 2}[card]


def test_card_002_prints_na_where_the_quantized_score_is_zero():
    na = [r for r in rows("002", with_na=True) if r[4] == "N/A"]
    assert [(r[1], r[3]) for r in na] == [("Math-lvl-5 (4-shot)", 0.0)]
    assert recovery(na[0][2], na[0][3]) == 0.0  # a ratio exists; the card chose not to print it


def test_card_000s_baseline_fits_only_the_suite_with_its_settings():
    from components.evaluation import references, suites

    ref = references.load("Meta-Llama-3.1-70B-Instruct.openllm-v1-2024")
    assert references.problems(ref, suites.load("openllm-v1-2024"), "Meta-Llama-3.1-70B-Instruct") == []
    found = references.problems(ref, suites.load("openllm-v1"), "Meta-Llama-3.1-70B-Instruct")
    assert found[0] == "it is for suite 'openllm-v1-2024', the evaluation runs 'openllm-v1'"
    assert "no published score for task(s) mmlu_llama" in found  # the newer card's generative MMLU is another task
