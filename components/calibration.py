"""Calibration sets: an HF dataset with the chat template applied, or random token ids."""
from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel

from components.digests import digest_obj
from components.specs import CalibrationSpec

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class CalibSet(BaseModel):
    """A tokenized calibration set saved with `Dataset.save_to_disk`."""

    path: str
    digest: str
    num_samples: int
    max_seq_length: int
    num_tokens: int
    description: str


def load_raw(spec: CalibrationSpec):
    """The dataset the spec names: a local file, a local dataset dir, or a Hub id via `load_dataset`."""
    from datasets import load_dataset

    local = spec.dataset_path
    if local.is_file():
        builder = FILE_BUILDERS.get(local.suffix)
        if builder is None:
            raise ValueError(f"calibration file {local}: unsupported type {local.suffix!r} (use {', '.join(FILE_BUILDERS)})")
        return load_dataset(builder, data_files=str(local), split="train")
    return load_dataset(spec.dataset, spec.config_name, split=spec.split)


def build(spec: CalibrationSpec, tokenizer) -> tuple["Dataset", str]:  # noqa: F821
    """Tokenized samples and a human description, as in the seed cards' Creation sections."""
    from datasets import Dataset

    if spec.source == "random":
        # Seed 002: random ids in [0, len(vocab) - 1], full attention mask.
        rng = random.Random(spec.seed)
        top = len(tokenizer.get_vocab()) - 1
        ids = [[rng.randint(0, top) for _ in range(spec.max_seq_length)] for _ in range(spec.num_samples)]
        ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * spec.max_seq_length for _ in ids]})
        return ds, f"{spec.num_samples} random-token sequences of length {spec.max_seq_length} (seed {spec.seed})"

    raw = load_raw(spec)
    if spec.column not in raw.column_names:
        raise ValueError(f"calibration dataset {spec.dataset} has no column {spec.column!r} (columns: {raw.column_names})")
    if len(raw) < spec.num_samples:
        raise ValueError(f"calibration dataset {spec.dataset} has {len(raw)} samples, {spec.num_samples} asked for")
    raw = raw.shuffle(seed=spec.seed).select(range(spec.num_samples))

    def to_text(example):
        value = example[spec.column]
        if spec.apply_chat_template:
            value = tokenizer.apply_chat_template(value, tokenize=False)
        return {"text": value}

    def tokenize(example):
        return tokenizer(example["text"], padding=False, max_length=spec.max_seq_length, truncation=True, add_special_tokens=False)

    # Fingerprints given, not hashed from the closures: datasets' hashing disassembles them through dill, which
    # Prefect's log_prints turns into hundreds of bytecode lines in the run log. In memory: no cache file to go stale.
    tag = digest_obj([spec.model_dump(), getattr(tokenizer, "name_or_path", ""), len(tokenizer)])[:16]
    ds = raw.map(to_text, new_fingerprint=f"qf-text-{tag}", keep_in_memory=True).map(
        tokenize, remove_columns=raw.column_names + ["text"], new_fingerprint=f"qf-tokens-{tag}", keep_in_memory=True)
    return ds, f"{spec.num_samples} samples of {spec.dataset} (split {spec.split}, seed {spec.seed}, max length {spec.max_seq_length})"


def save(ds, description: str, spec: CalibrationSpec, root: Path) -> CalibSet:
    """Save under a content digest of the token ids (the digest names the folder), once: under the folder's lock,
    written to a unique temporary name, renamed whole and stamped; a whole, intact copy is kept as it is."""
    from components import artifacts

    digest = digest_obj(ds["input_ids"])
    out = root / digest[:16]
    calib = CalibSet(
        path=str(out),
        digest=digest,
        num_samples=len(ds),
        max_seq_length=spec.max_seq_length,
        num_tokens=sum(len(x) for x in ds["input_ids"]),
        description=description,
    )
    with artifacts.locked(out):
        if artifacts.problems(out):
            tmp = artifacts.workdir(out)
            try:
                ds.save_to_disk(str(tmp))
                artifacts.install(tmp, out, calib)
            finally:
                artifacts.remove(tmp)
    return calib
