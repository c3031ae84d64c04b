"""The card has the seed cards' structure and every number comes from the facts given."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from components import recipes
from components.calibration import CalibSet
from components.card.render import CardFacts, render
from components.evaluation.command import EngineSettings, build_commands
from components.evaluation.results import TaskScore
from components.evaluation.runner import EvalResult
from components.evaluation.suites import load
from components.models import ModelRef
from components.gate import gate
from components.recovery import table
from components.specs import VariantSpec

SEED_000 = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "000_3781f6cbd6e196ee.txt"
SECTIONS = ["# ", "## Model Overview", "### Model Optimizations", "## Deployment", "### Use with vLLM", "## Creation",
            "## Evaluation", "### Accuracy", "### Reproduction"]


def headings(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        for s in SECTIONS:
            if line == s.strip() or (s == "# " and line.startswith("# ")):
                out.append(s.strip() if s != "# " else "#")
    return out


def facts(tmp_path: Path) -> CardFacts:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    suite = load("smoke")
    s = EngineSettings(engine="vllm", platform="cuda", tensor_parallel_size=2)
    base = {t.task: TaskScore(task=t.task, label=t.label, metric=t.metric, value=v, stderr=0.01,
                              higher_is_better=t.higher_is_better, n=30) for t, v in zip(suite.tasks, [0.8383, 0.25, 12.5], strict=True)}
    quant = {k: v.model_copy(update={"value": v.value * 0.99}) for k, v in base.items()}
    cmds = build_commands("/data/ckpt/Meta-Llama-3.1-70B-Instruct-FP8", suite, s, "/abs/tasks")
    ev = EvalResult(suite="smoke", suite_digest="d", settings=s, commands=cmds, scores=quant, wall_s=1.0, output_dir="/x", date="2024-07-23")
    return CardFacts(
        name="Meta-Llama-3.1-70B-Instruct-FP8", model_id="org/Meta-Llama-3.1-70B-Instruct-FP8",
        spec=VariantSpec.model_validate({"scheme": "fp8-static", "calibration": {"dataset": "HuggingFaceH4/ultrachat_200k",
                                         "split": "train_sft", "num_samples": 512, "max_seq_length": 4096}}),
        base=ModelRef(source="meta-llama/Meta-Llama-3.1-70B-Instruct", name="Meta-Llama-3.1-70B-Instruct",
                      path=str(tmp_path), digest="abc"),
        scheme=recipes.load("fp8-static"),
        calibration=CalibSet(path="/c", digest="cafe", num_samples=512, max_seq_length=4096, num_tokens=1,
                             description="512 samples of HuggingFaceH4/ultrachat_200k"),
        suite=suite, variant_eval=ev, table=table(base, quant), gate=gate(table(base, quant)), versions={"lm_eval": "0.4.13"})


def test_card_follows_the_seed_layout(tmp_path):
    card = render(facts(tmp_path))
    seed = SEED_000.read_text()
    assert headings(card)[: len(headings(seed))] == headings(seed)
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "meta-llama/Meta-Llama-3.1-70B-Instruct" and "fp8-static" in front["tags"]
    assert "**Release Date:** 07/23/2024" in card
    assert "number_gpus = 2" in card and 'model_id = "org/Meta-Llama-3.1-70B-Instruct-FP8"' in card


def test_card_numbers_come_from_the_run(tmp_path):
    card = render(facts(tmp_path))
    assert "| Facts (0-shot) | 83.83 | 82.99 | 99.00% |" in card
    assert "| Prose word perplexity | 12.50 | 12.38 | 101.01% |" in card
    assert re.search(r"\| \*\*Average\*\* \| \*\*54\.41\*\* \| \*\*53\.87\*\* \| \*\*99\.00%\*\* \|", card)


def test_card_reproduction_is_the_command_that_ran(tmp_path):
    f = facts(tmp_path)
    card = render(f)
    assert 'pretrained="org/Meta-Llama-3.1-70B-Instruct-FP8",dtype=auto,max_model_len=2048,tensor_parallel_size=2' in card
    assert "/data/ckpt" not in card and "--include_path components/evaluation/tasks" in card
    assert 'load_dataset("HuggingFaceH4/ultrachat_200k", split="train_sft")' in card
    assert "ds.shuffle(seed=42).select(range(512))" in card
    assert "strategy: tensor" in card and "lm_head" in card


def test_card_states_the_gate(tmp_path):
    card = render(facts(tmp_path))
    assert "**Gate: PASSED** (per task within 8% of the baseline unless the drop is within noise" in card
