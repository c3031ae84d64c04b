from components.comparison import chart, markdown

ROWS = [{"name": "m-quantized.w8a8", "scheme": "w8a8-int8", "gate": "passed", "recovery": {"a": 99.5, "b": 101.0},
         "average": 100.1},
        {"name": "m-FP8-dynamic", "scheme": "fp8-dynamic", "gate": "failed", "recovery": {"a": 90.0}, "average": None}]


def test_markdown_one_row_per_variant():
    text = markdown(["a", "b"], ROWS)
    assert text.splitlines()[2] == "| m-quantized.w8a8 | w8a8-int8 | 99.50% | 101.00% | 100.10% | passed |"
    assert text.splitlines()[3] == "| m-FP8-dynamic | fp8-dynamic | 90.00% | N/A | N/A | failed |"


def test_chart_is_a_png(tmp_path):
    path = chart(["a", "b"], ROWS, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_rows_carry_intervals_verdicts_and_what_the_average_covers():
    from components.evaluation.results import DocScores, TaskScore
    from components.comparison import chart_row
    from components.gate import gate
    from components.recovery import table

    def sc(task, values, metric="acc", hib=True):
        v = sum(values) / len(values)
        return TaskScore(task=task, label=task, metric=metric, value=v, stderr=None, higher_is_better=hib, n=len(values),
                         samples=DocScores(ids=[f"{task}/{i}" for i in range(len(values))], values=values))

    b = [1.0] * 240 + [0.0] * 160
    t = table({"a": sc("a", b), "z": sc("z", [0.0] * 10)}, {"a": sc("a", [0.0] * 4 + b[4:]), "z": sc("z", [0.0] * 10)})
    row = chart_row("m-w8a8", t, gate(t))
    assert row["gate"] == "PASSED" and row["verdict"] == {"a": "PASSED"}  # z: N/A, reported not gated
    text = markdown(["a", "z"], [row | {"scheme": "w8a8-int8"}])
    lo, hi = row["interval"]["a"]
    assert f"| 98.33% [{lo:.2f}, {hi:.2f}] PASSED | N/A |" in text
    assert "(all 2 tasks) | PASSED |" in text
