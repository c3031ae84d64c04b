from components.comparison import chart, markdown

ROWS = [{"name": "m-quantized.w8a8", "scheme": "w8a8-int8", "gate": "passed", "recovery": {"a": 99.5, "b": 101.0}, "average": 100.1},
        {"name": "m-FP8-dynamic", "scheme": "fp8-dynamic", "gate": "failed", "recovery": {"a": 90.0}, "average": None}]


def test_markdown_one_row_per_variant():
    text = markdown(["a", "b"], ROWS)
    assert text.splitlines()[2] == "| m-quantized.w8a8 | w8a8-int8 | 99.50% | 101.00% | 100.10% | passed |"
    assert text.splitlines()[3] == "| m-FP8-dynamic | fp8-dynamic | 90.00% | N/A | N/A | failed |"


def test_chart_is_a_png(tmp_path):
    path = chart(["a", "b"], ROWS, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
