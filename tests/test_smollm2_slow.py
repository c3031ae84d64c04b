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
    assert rows["qf_facts"].base > 0.5, "SmolLM2-135M knows most of the shipped facts"
    assert 1 < rows["qf_prose"].base < 1000, "real model, not a random one"
    assert 80 < rows["qf_prose"].recovery <= 101
    card = Path(outcome.card).read_text()
    assert "SmolLM2-135M-Instruct-quantized.w8a8" in card and "GPTQModifier" in card
