"""Calibration sets: content digests, the seeds' two set-ups, clear errors."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from components.calibration import build, save
from components.specs import CalibrationSpec


@pytest.fixture(scope="module")
def tokenizer(embedded_tokenizer):
    return AutoTokenizer.from_pretrained(embedded_tokenizer)


def test_same_spec_same_digest_and_seed_changes_it(tokenizer, tmp_path):
    spec = CalibrationSpec(num_samples=8, max_seq_length=64)
    a = save(*build(spec, tokenizer), spec, tmp_path)
    b = save(*build(spec, tokenizer), spec, tmp_path)
    c_spec = spec.model_copy(update={"seed": 1})
    c = save(*build(c_spec, tokenizer), c_spec, tmp_path)
    assert a.digest == b.digest and a.path == b.path
    assert c.digest != a.digest
    assert a.num_samples == 8 and 0 < a.num_tokens <= 8 * 64


def test_chat_template_applied_and_no_special_tokens_added(tokenizer):
    ds, _ = build(CalibrationSpec(num_samples=4, max_seq_length=4096), tokenizer)
    text = tokenizer.decode(ds[0]["input_ids"])
    assert text.startswith("<|im_start|>") and "<|im_end|>" in text


def test_random_tokens_like_seed_002(tokenizer):
    spec = CalibrationSpec(source="random", num_samples=3, max_seq_length=16, seed=0)
    ds, desc = build(spec, tokenizer)
    assert len(ds) == 3 and all(len(x) == 16 for x in ds["input_ids"])
    assert max(max(x) for x in ds["input_ids"]) <= len(tokenizer.get_vocab()) - 1
    assert ds["attention_mask"][0] == [1] * 16
    assert "random-token" in desc
    assert build(spec, tokenizer)[0]["input_ids"] == ds["input_ids"]


def test_dataset_dir_through_load_dataset(tokenizer, tmp_path):
    # The production path (`load_dataset(<id>, split=...)`) fed a local dataset folder.
    d = tmp_path / "ultrachat_like" / "data"
    d.mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(10)]
    (d / "train_sft-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = CalibrationSpec(dataset=str(tmp_path / "ultrachat_like"), split="train_sft", num_samples=5, max_seq_length=32)
    ds, _ = build(spec, tokenizer)
    assert len(ds) == 5


def test_too_few_samples(tokenizer):
    with pytest.raises(ValueError, match="has 48 samples, 1000 asked for"):
        build(CalibrationSpec(num_samples=1000), tokenizer)


def test_missing_column(tokenizer):
    with pytest.raises(ValueError, match="no column 'conversation'"):
        build(CalibrationSpec(column="conversation"), tokenizer)


def test_unsupported_file(tokenizer, tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("hello")
    with pytest.raises(ValueError, match="unsupported type"):
        build(CalibrationSpec(dataset=str(f)), tokenizer)
