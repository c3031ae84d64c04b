"""Preflight's memo of its model-side facts (components/preflight_memo.py): a rerun with the same inputs imports
neither torch, transformers nor llm-compressor and plans the same; any change to what the checks read is a miss that
finds its problem; a spec with a problem leaves no memo; a corrupt memo is a miss.

The rerun runs in fresh processes (this one has torch already); the rest in-process, each with its own QUANTFLOW_HOME.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from servers import no_aws_environment
from tiny import tiny_spec

from components import recipes
from components.models import max_positions
from components.preflight import PreflightError, preflight
from components.preflight_memo import ModelFacts
from components.settings import settings

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "llmcompressor", "compressed_tensors")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path) -> Path:
    for var in ("HF_TOKEN", "QUANTFLOW_ALLOW_CODE_EXECUTION"):
        monkeypatch.delenv(var, raising=False)
    no_aws_environment(monkeypatch, tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("QUANTFLOW_HOME", str(home))
    settings.cache_clear()
    yield home
    settings.cache_clear()


def spec_of(model: Path, tmp: Path, **over) -> dict:
    return tiny_spec(model, **{"stores": [{"kind": "local", "uri": str(tmp / "published")}], **over})


def memos(home: Path) -> list[Path]:
    return sorted((home / "preflight").glob("*.json"))


def model_copy(tiny: Path, where: Path) -> Path:
    """The tiny model's small files copied, its weights linked: a model whose config.json a test may change."""
    where.mkdir()
    for p in tiny.iterdir():
        (where / p.name).symlink_to(p) if p.suffix == ".safetensors" else shutil.copy(p, where / p.name)
    return where


_PREFLIGHT = """
import json, pickle, sys
from components.preflight import preflight
plan = preflight(json.loads(sys.argv[1]))
open(sys.argv[2], "wb").write(pickle.dumps(plan))
print(json.dumps([m for m in sys.argv[3].split(",") if m in sys.modules]))
"""


def preflight_in_a_fresh_process(spec: dict, out: Path) -> tuple[object, list[str]]:
    """(the Plan, which of HEAVY the process had imported after preflight)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _PREFLIGHT, json.dumps(spec), str(out), ",".join(HEAVY)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return pickle.loads(out.read_bytes()), json.loads(r.stdout.strip().splitlines()[-1])


def test_a_rerun_imports_neither_torch_transformers_nor_llmcompressor(tiny_model, tmp_path, home):
    spec = spec_of(tiny_model, tmp_path)
    first, imported = preflight_in_a_fresh_process(spec, tmp_path / "first.pkl")
    assert set(imported) >= {"torch", "transformers", "llmcompressor"}, imported  # the checks ran
    assert len(memos(home)) == 1
    second, imported = preflight_in_a_fresh_process(spec, tmp_path / "second.pkl")
    assert imported == [], f"a rerun imported {imported}"
    assert second == first
    assert second.checkpoint_bytes and second.memory is not None and second.memory.fits


def test_a_changed_config_is_a_miss_that_finds_its_problem(tiny_model, tmp_path, home):
    model = model_copy(tiny_model, tmp_path / "model")
    plan = preflight(spec_of(model, tmp_path))
    [memo] = memos(home)
    raw = (model / "config.json").read_bytes()
    cfg = json.loads(raw)
    # a shorter context: another config, another key, fresh facts
    (model / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": cfg["max_position_embeddings"] // 2}))
    preflight(spec_of(model, tmp_path))
    assert len(memos(home)) == 2
    # one layer for weights that hold two: refused, memos or not (the weights are read on every run)
    (model / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    with pytest.raises(PreflightError, match="does not match its weights"):
        preflight(spec_of(model, tmp_path))
    assert len(memos(home)) == 2
    # not a causal LM any more: the problem is found although memos of this model exist
    (model / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(PreflightError, match="have no causal-LM head"):
        preflight(spec_of(model, tmp_path))
    assert len(memos(home)) == 2
    (model / "config.json").write_bytes(raw)  # back as it was: the first memo again, the same plan
    assert preflight(spec_of(model, tmp_path)) == plan and len(memos(home)) == 2 and memo in memos(home)


def test_a_changed_recipe_is_a_miss_that_finds_its_problem(tiny_model, tmp_path, home, monkeypatch):
    preflight(spec_of(tiny_model, tmp_path))
    assert len(memos(home)) == 1
    d = tmp_path / "recipes"
    d.mkdir()
    for p in recipes.RECIPES.glob("*.yaml"):
        shutil.copy(p, d / p.name)
    monkeypatch.setattr(recipes, "RECIPES", d)
    doc = yaml.safe_load((d / "w8a8-int8.yaml").read_text())
    doc["recipe"]["quant_stage"]["quant_modifiers"]["GPTQModifier"]["targets"] = ["Conv2d"]
    (d / "w8a8-int8.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(PreflightError, match="target 'Conv2d' matches no module"):
        preflight(spec_of(tiny_model, tmp_path))
    assert len(memos(home)) == 1


def test_a_spec_with_a_problem_leaves_no_memo(tiny_model, tmp_path, home):
    with pytest.raises(PreflightError, match="max_seq_length 8192 is above"):
        preflight(spec_of(tiny_model, tmp_path, calibration__max_seq_length=8192))
    assert memos(home) == []
    with pytest.raises(PreflightError, match="file not found"):
        preflight(spec_of(tiny_model, tmp_path, calibration__dataset=str(tmp_path / "missing.jsonl")))
    assert memos(home) == []
    preflight(spec_of(tiny_model, tmp_path))  # the same model and scheme without the problem: remembered
    assert len(memos(home)) == 1


@pytest.mark.parametrize("corrupt", [b"", b"{", b'{"key": "x"}', b"\xff\xfe"])
def test_a_corrupt_memo_is_a_miss(tiny_model, tmp_path, home, corrupt):
    plan = preflight(spec_of(tiny_model, tmp_path))
    [memo] = memos(home)
    memo.write_bytes(corrupt)
    assert preflight(spec_of(tiny_model, tmp_path)) == plan
    facts = ModelFacts.model_validate_json(memo.read_bytes())  # found afresh and stored again
    assert facts.key == memo.stem and facts.params > 0


def test_a_memo_under_another_key_is_a_miss(tiny_model, tmp_path, home):
    """A file whose content names another key (copied, or written for other inputs) is not trusted."""
    preflight(spec_of(tiny_model, tmp_path))
    [memo] = memos(home)
    facts = ModelFacts.model_validate_json(memo.read_bytes())
    memo.write_text(facts.model_copy(update={"key": "0" * 64, "checkpoint_bytes": 1}).model_dump_json())
    assert preflight(spec_of(tiny_model, tmp_path)).checkpoint_bytes == facts.checkpoint_bytes


def test_max_positions_reads_the_config_as_a_dict():
    assert max_positions({"max_position_embeddings": 2048}) == 2048
    assert max_positions({"text_config": {"max_position_embeddings": 4096}, "vision_config": {}}) == 4096
    assert max_positions({"model_type": "x"}) is None
    assert max_positions({"max_position_embeddings": True}) is None
    from transformers import LlamaConfig

    config = LlamaConfig(max_position_embeddings=1024)
    assert max_positions(config) == max_positions(json.loads(config.to_json_string(use_diff=False))) == 1024
