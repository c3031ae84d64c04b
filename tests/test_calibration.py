"""Calibration sets: content digests, the seeds' two set-ups, clear errors."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from components.calibration import build, save, token_digest
from components.digests import digest_obj
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


def test_sample_counts_sharing_their_first_rows_get_their_own_digest_and_folder(tokenizer, tmp_path):
    """6 and 8 samples of one shuffle share their first six rows (a digest of the column's five-row repr was one)."""
    from datasets import load_from_disk

    sets = {}
    for n in (6, 8):
        spec = CalibrationSpec(num_samples=n, max_seq_length=64)
        ds, description = build(spec, tokenizer)
        sets[n] = (ds, save(ds, description, spec, tmp_path))
    (six, a), (eight, b) = sets[6], sets[8]
    assert six["input_ids"][:6] == eight["input_ids"][:6]
    assert a.digest != b.digest and a.path != b.path
    assert len(load_from_disk(a.path)) == 6 and len(load_from_disk(b.path)) == 8
    assert b.num_tokens == sum(len(x) for x in eight["input_ids"])


def _rows(n: int = 12) -> dict[str, list[list[int]]]:
    ids = [[(7 * i + j) % 50 for j in range(3 + i % 4)] for i in range(n)]
    return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}


def _digest(rows: dict) -> str:
    from datasets import Dataset

    return token_digest(Dataset.from_dict(rows))[0]


@pytest.mark.parametrize("row", [0, 6, 11])
def test_any_single_row_changes_the_digest(row):
    base = _digest(_rows())
    ids = _rows()
    ids["input_ids"][row][-1] += 1
    assert _digest(ids) != base, "a token id"
    mask = _rows()
    mask["attention_mask"][row][0] = 0
    assert _digest(mask) != base, "an attention mask"
    longer = _rows()
    longer["input_ids"][row].append(1)
    longer["attention_mask"][row].append(1)
    assert _digest(longer) != base, "a row's length"


def test_count_and_order_change_the_digest_and_batches_do_not():
    from datasets import Dataset

    rows = _rows()
    base = _digest(rows)
    assert _digest({k: v[:11] for k, v in rows.items()}) != base, "one row fewer"
    assert _digest({k: v[1:] + v[:1] for k, v in rows.items()}) != base, "the same rows in another order"
    # Row boundaries count: the same tokens split otherwise are another set.
    flat = [t for x in rows["input_ids"] for t in x]
    split = {"input_ids": [flat[:4], flat[4:]], "attention_mask": [[1] * 4, [1] * (len(flat) - 4)]}
    assert _digest(split) != _digest({"input_ids": [flat[:5], flat[5:]], "attention_mask": split["attention_mask"]})
    ds = Dataset.from_dict(rows)
    assert {token_digest(ds, batch_size=b) for b in (1, 5, 1024)} == {(base, sum(len(x) for x in rows["input_ids"]))}
    reverse = ds.select(range(len(ds) - 1, -1, -1))  # an indices mapping over the same table, as shuffle().select()
    assert token_digest(reverse)[0] == _digest({k: v[::-1] for k, v in rows.items()}) != base


def test_digest_obj_refuses_a_lazy_column_instead_of_digesting_its_repr():
    from datasets import Dataset

    with pytest.raises(TypeError, match="not datasets.arrow_dataset.Column"):
        digest_obj(Dataset.from_dict(_rows())["input_ids"])


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
