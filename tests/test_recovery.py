import json
import math

import numpy as np
import pytest

from components.evaluation.results import DocScores, TaskScore, leaf_tasks, parse_dir
from components.evaluation.suites import Suite, SuiteTask
from components.evaluation.results import binomial_se
from components.recovery import paired_recovery, recovery, table


def s(task, value, hib=True, stderr=0.01, metric="acc", samples=None, n=100):
    return TaskScore(task=task, label=task, metric=metric, value=value, stderr=stderr, higher_is_better=hib, n=n,
                     samples=samples)


def docs(task, values, weights=None):
    return DocScores(ids=[f"{task}/{i}" for i in range(len(values))], values=[float(v) for v in values], weights=weights)


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
    assert t.average_covers == "all 7 tasks" and t.average_ci_low < t.average_recovery < t.average_ci_high


def test_average_says_it_leaves_perplexity_out():
    t = table({"a": s("a", 0.5), "ppl": s("ppl", 20.0, hib=False, metric="word_perplexity")},
              {"a": s("a", 0.4), "ppl": s("ppl", 25.0, hib=False, metric="word_perplexity")})
    assert t.average_base == 0.5 and t.average_recovery == pytest.approx(80.0)
    assert t.average_tasks == ["a"] and t.average_covers == "accuracy tasks, 1 of 2"
    # perplexity: the likelihood kept per word, exp(ll_q - ll_b) = ppl_b / ppl_q
    assert t.rows[1].log_scale and t.rows[1].recovery == pytest.approx(80.0)


def test_different_tasks_refused():
    with pytest.raises(ValueError, match="different tasks"):
        table({"a": s("a", 0.5)}, {"b": s("b", 0.5)})


def _pair(n, base_right, flips, seed=0):
    """n documents, base right on the first base_right; the variant flips `flips` of them to wrong."""
    b = np.array([1.0] * base_right + [0.0] * (n - base_right))
    q = b.copy()
    q[:flips] = 0.0
    return b, q


def test_paired_bootstrap_is_tighter_than_unpaired_and_seeded():
    b, q = _pair(400, 240, 4)
    paired = table({"a": s("a", b.mean(), samples=docs("a", b), n=400)}, {"a": s("a", q.mean(), samples=docs("a", q), n=400)})
    unpaired = table({"a": s("a", b.mean(), stderr=None, n=400)}, {"a": s("a", q.mean(), samples=docs("a", q), n=400)})
    p, u = paired.rows[0], unpaired.rows[0]
    assert p.method.startswith("paired bootstrap over 400 documents, never narrower than the paired score interval "
                               "(0 gained, 4 lost)") and u.method.startswith("unpaired")
    assert p.ci_low <= p.recovery <= p.ci_high and u.ci_low <= u.recovery <= u.ci_high
    assert (p.ci_high - p.ci_low) < 0.3 * (u.ci_high - u.ci_low)
    again = table({"a": s("a", b.mean(), samples=docs("a", b))}, {"a": s("a", q.mean(), samples=docs("a", q))})
    assert (again.rows[0].ci_low, again.rows[0].ci_high) == (p.ci_low, p.ci_high)  # fixed seed


def test_documents_pair_by_id_not_by_position():
    b, q = _pair(200, 120, 2)
    shuffled = np.random.default_rng(3).permutation(200)
    qdocs = DocScores(ids=[f"a/{i}" for i in shuffled], values=[float(q[i]) for i in shuffled])
    t = table({"a": s("a", b.mean(), samples=docs("a", b))}, {"a": s("a", q.mean(), samples=qdocs)})
    assert t.rows[0].method.startswith("paired") and t.rows[0].ci_high - t.rows[0].ci_low < 6.0  # paired by position: ~27


def test_perplexity_interval_is_on_the_log_scale():
    rng = np.random.default_rng(1)
    words = rng.integers(50, 100, 24).astype(float)
    ll_b = -rng.uniform(3.5, 4.5, 24) * words
    ll_q = ll_b - 0.05 * words  # the variant keeps exp(-0.05) = 95.1% of the likelihood per word
    ppl = [math.exp(-ll.sum() / words.sum()) for ll in (ll_b, ll_q)]
    kw = dict(hib=False, metric="word_perplexity", stderr=None)
    t = table({"p": s("p", ppl[0], samples=docs("p", ll_b, list(words)), **kw)},
              {"p": s("p", ppl[1], samples=docs("p", ll_q, list(words)), **kw)})
    r = t.rows[0]
    assert r.recovery == pytest.approx(100 * math.exp(-0.05)) == pytest.approx(100 * ppl[0] / ppl[1])
    assert r.ci_low == pytest.approx(r.recovery, abs=1e-6) and r.ci_high == pytest.approx(r.recovery, abs=1e-6)


def test_binomial_stderr():
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(50.0, 100) is None and binomial_se(0.5, None) is None


# --- lm-eval's per-document samples (0.4.13 `--log_samples` format) ---------------------------------------------

DATE = "2026-01-01T00-00-00.000001"


def _line(doc_id, filter_, **metrics):
    return json.dumps({"doc_id": doc_id, "doc": {}, "target": "x", "arguments": {}, "resps": [], "filtered_resps": [],
                       "filter": filter_, "metrics": list(metrics), "doc_hash": "h", "prompt_hash": "p",
                       "target_hash": "t", **metrics})


@pytest.fixture
def lm_eval_run(tmp_path):
    """A results file and its samples files as lm-eval writes them under --output_path/<model>/."""
    out = tmp_path / "run0" / "__models__tiny"
    out.mkdir(parents=True)
    results = {
        "results": {"qf_facts": {"acc,none": 0.5, "acc_stderr,none": 0.2},
                    "qf_arith": {"exact_match,first-number": 0.75, "exact_match_stderr,first-number": 0.2},
                    "qf_prose": {"word_perplexity,none": math.exp(-(-10 - 14) / (4 + 6))},
                    "grp": {"acc,none": (1 + 2) / 5}},
        "group_subtasks": {"grp": ["grp_a", "grp_b"]},
        "n-samples": {"qf_facts": {"original": 30, "effective": 4}, "grp_a": {"original": 2, "effective": 2},
                      "grp_b": {"original": 3, "effective": 3}},
        "versions": {"qf_facts": 1.0, "qf_arith": "2.0", "grp": None},
        "lm_eval_version": "0.4.13",
    }
    (out / f"results_{DATE}.json").write_text(json.dumps(results))
    (out / f"samples_qf_facts_{DATE}.jsonl").write_text("\n".join(_line(i, "none", acc=v) for i, v in enumerate([1, 0, 1, 0])))
    (out / f"samples_qf_arith_{DATE}.jsonl").write_text("\n".join(
        [_line(i, "first-number", exact_match=v) for i, v in enumerate([1, 1, 1, 0])]
        + [_line(i, "none", exact_match=0.0) for i in range(4)]))
    (out / f"samples_qf_prose_{DATE}.jsonl").write_text(
        _line(0, "none", word_perplexity=[-10.0, 4], byte_perplexity=[-10.0, 20]) + "\n"
        + _line(1, "none", word_perplexity=[-14.0, 6], byte_perplexity=[-14.0, 30]))
    (out / f"samples_grp_a_{DATE}.jsonl").write_text("\n".join(_line(i, "none", acc=v) for i, v in enumerate([1, 0])))
    (out / f"samples_grp_b_{DATE}.jsonl").write_text("\n".join(_line(i, "none", acc=v) for i, v in enumerate([1, 1, 0])))
    (out / "samples_qf_facts_2025-12-31T00-00-00.jsonl").write_text(_line(9, "none", acc=1))  # an older run: ignored
    suite = Suite(name="t", description="t", tasks=[
        SuiteTask(task="qf_facts", label="Facts", metric="acc"),
        SuiteTask(task="qf_arith", label="Arith", metric="exact_match", filter="first-number"),
        SuiteTask(task="qf_prose", label="Prose", metric="word_perplexity", higher_is_better=False),
        SuiteTask(task="grp", label="Group", metric="acc")])
    return tmp_path / "run0", suite


def test_what_ran_is_recorded_for_comparison(lm_eval_run):
    """lm-eval's own record of each task (version, documents scored and existing) goes with its score."""
    run_dir, suite = lm_eval_run
    scores = parse_dir(run_dir, suite)
    facts = scores["qf_facts"]
    assert (facts.n, facts.n_available) == (4, 30)  # under a limit: 4 of the task's 30 documents
    assert facts.evaluated.model_dump() == {"harness": "lm-eval 0.4.13", "task": "qf_facts", "version": "1", "docs": 4,
                                            "metric": "acc", "filter": "none"}
    assert scores["qf_arith"].evaluated.version == "2" and scores["qf_arith"].evaluated.filter == "first-number"
    assert (scores["grp"].n, scores["grp"].n_available, scores["grp"].evaluated.version) == (5, 5, None)  # its leaves


def test_samples_are_parsed_per_document(lm_eval_run):
    run_dir, suite = lm_eval_run
    scores = parse_dir(run_dir, suite)
    facts = scores["qf_facts"].samples
    assert facts.ids == ["qf_facts/0", "qf_facts/1", "qf_facts/2", "qf_facts/3"] and facts.values == [1, 0, 1, 0]
    assert facts.weights is None
    assert scores["qf_arith"].samples.values == [1, 1, 1, 0]  # the task's filter only
    prose = scores["qf_prose"].samples
    assert prose.values == [-10.0, -14.0] and prose.weights == [4.0, 6.0]
    grp = scores["grp"].samples
    assert grp.ids == ["grp_a/0", "grp_a/1", "grp_b/0", "grp_b/1", "grp_b/2"] and grp.pooled  # 3/5 is pooled


def test_group_with_equal_weights_is_detected(lm_eval_run):
    run_dir, suite = lm_eval_run
    path = next(run_dir.rglob("results_*.json"))
    doc = json.loads(path.read_text())
    doc["results"]["grp"]["acc,none"] = (1 / 2 + 2 / 3) / 2
    path.write_text(json.dumps(doc))
    assert not parse_dir(run_dir, suite)["grp"].samples.pooled


def test_no_samples_file_means_no_samples(lm_eval_run):
    run_dir, suite = lm_eval_run
    for p in run_dir.rglob("samples_qf_facts_*.jsonl"):
        p.unlink()
    assert parse_dir(run_dir, suite)["qf_facts"].samples is None


def test_leaf_tasks_recurse():
    doc = {"group_subtasks": {"g": ["h", "c"], "h": ["a", "b"]}}
    assert leaf_tasks(doc, "g") == ["a", "b", "c"] and leaf_tasks(doc, "x") == ["x"]


def test_parsed_samples_feed_a_paired_table(lm_eval_run):
    run_dir, suite = lm_eval_run
    base = parse_dir(run_dir, suite)
    quant = {k: v.model_copy(deep=True) for k, v in base.items()}
    t = table(base, quant)
    assert all(r.method.startswith("paired bootstrap") for r in t.rows)
    rows = {r.task: r for r in t.rows}
    assert rows["qf_prose"].ci_low == pytest.approx(100.0) == rows["qf_prose"].ci_high  # log-likelihoods: no ties to bound
    # identical 0/1 answers on 4 documents prove little: the paired score interval with none differing (Tango's
    # z^2 / (n + z^2) of the documents could differ), clamped to what 2 right answers of 4 can reach (0% to 200%)
    facts = rows["qf_facts"]
    z2 = 1.6448536269514722 ** 2
    half = 100 * z2 / (4 + z2) / 0.5
    assert "none differing" in facts.method and (facts.ci_low, facts.ci_high) == pytest.approx((100 - half, 100 + half))
    # and the average over such tasks is no surer than they are: never a point on a few identical answers
    assert t.average_ci_low <= 100 - half / len(t.average_tasks) and t.average_ci_high >= 100 + half / len(t.average_tasks)


def test_table_round_trips_with_what_the_average_covers():
    t = table({"a": s("a", 0.5), "ppl": s("ppl", 20.0, hib=False, metric="word_perplexity")},
              {"a": s("a", 0.4), "ppl": s("ppl", 25.0, hib=False, metric="word_perplexity")})
    dumped = t.model_dump(mode="json")
    assert dumped["average_covers"] == "accuracy tasks, 1 of 2"
    assert type(t).model_validate(dumped) == t


def _at_floor(base: float, discordant: float, floor: float = 0.92) -> list[float]:
    """Cell probabilities (both right, lost, gained, both wrong) of a population whose recovery is exactly `floor`:
    a large sample from it fails or straddles, never passes; discordant: the share of documents that differ."""
    d = max(discordant, (1 - floor) * base)
    lost, gained = (d + (1 - floor) * base) / 2, (d - (1 - floor) * base) / 2
    return [base - lost, lost, gained, 1 - base - gained]


def test_small_samples_pass_a_failing_population_no_more_often_than_the_error_rate():
    """Simulated (seeded): pass/fail tasks of 5 to 300 documents drawn from populations at the 92% floor (the
    hardest case; below it passing is rarer). Each bound of the 90% interval is a one-sided 5% test, so PASSED may
    come at most 5% of the time (plus the simulation's own error). The gate's interval is never narrower than the
    paired score interval (min of its lower bound and the bootstrap's), so the score interval passing bounds it."""
    rng, sims = np.random.default_rng(23), 2000
    allowed = 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims)
    rates = {}
    for n in (5, 10, 20, 30, 50, 100, 300):
        for base in (0.3, 0.6, 0.9):
            for discordant in (0.0, 0.1, 0.3):
                probs = _at_floor(base, discordant)
                if min(probs) < 0:
                    continue
                both, lost, gained, _ = rng.multinomial(n, probs, size=sims).T
                right = both + lost
                with np.errstate(divide="ignore", invalid="ignore"):
                    low = paired_recovery(gained, lost, np.full(sims, n), right)[0]
                rates[n, base, discordant] = float(np.mean((right > 0) & (low >= 92.0)))
    worst = max(rates, key=rates.get)
    assert rates[worst] <= allowed, f"PASSED {rates[worst]:.3f} of the time at the floor for {worst}"
    assert rates[5, 0.6, 0.1] == rates[10, 0.6, 0.0] == 0.0 and rates[100, 0.6, 0.1] > 0.01  # honest, not just strict


def test_the_gate_passes_no_sample_the_score_interval_would_not():
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = int(rng.integers(5, 60))
        cells = rng.choice(4, size=n, p=_at_floor(0.7, 0.15))
        b, q = np.isin(cells, [0, 1]).astype(float), np.isin(cells, [0, 2]).astype(float)
        if not b.sum():
            continue
        r = table({"a": s("a", b.mean(), samples=docs("a", b))}, {"a": s("a", q.mean(), samples=docs("a", q))},
                  n_boot=300).rows[0]
        lo, hi = paired_recovery(r.gained, r.lost, n, b.sum())
        assert r.ci_low <= lo + 1e-9 and r.ci_high >= hi - 1e-9
