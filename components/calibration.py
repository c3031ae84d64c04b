"""Calibration sets: an HF dataset with the chat template applied, or random token ids; and their preflight check."""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from components.digests import digest_obj
from components.models import BaseInfo, looks_like_path, max_positions
from components.messages import Checked, did_you_mean, first_line
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

    def artifact_problems(self) -> list[str]:
        """How the saved set differs from its stamp, or the stamp from this result."""
        from components import artifacts

        return artifacts.problems(Path(self.path), self)


def load_args(spec: CalibrationSpec) -> tuple[tuple[str, ...], dict[str, str]]:
    """The `load_dataset` arguments for the dataset the spec names (a local file, a local dataset dir, or a Hub id
    with its config): what runs, and what the card's Creation code shows."""
    local = spec.dataset_path
    if local.is_file():
        builder = FILE_BUILDERS.get(local.suffix)
        if builder is None:
            raise ValueError(f"calibration file {local}: unsupported type {local.suffix!r} (use {', '.join(FILE_BUILDERS)})")
        return (builder,), {"data_files": str(local), "split": "train"}
    return (spec.dataset, *([spec.config_name] if spec.config_name else [])), {"split": spec.split}


def load_raw(spec: CalibrationSpec):
    from datasets import load_dataset

    args, kwargs = load_args(spec)
    return load_dataset(*args, **kwargs)


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
    if len(raw) == 0:
        raise ValueError(f"calibration dataset {spec.dataset} is empty (no rows): give one with at least "
                         f"{spec.num_samples} rows (calibration.num_samples)")
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
        return tokenizer(example["text"], padding=False, max_length=spec.max_seq_length, truncation=True,
                         add_special_tokens=False)

    # Fingerprints given, not hashed from the closures: datasets' hashing disassembles them through dill, which
    # Prefect's log_prints turns into hundreds of bytecode lines in the run log. In memory: no cache file to go stale.
    tag = digest_obj([spec.model_dump(mode="json"), str(getattr(tokenizer, "name_or_path", "")), len(tokenizer)])[:16]
    ds = raw.map(to_text, new_fingerprint=f"qf-text-{tag}", keep_in_memory=True).map(
        tokenize, remove_columns=raw.column_names + ["text"], new_fingerprint=f"qf-tokens-{tag}", keep_in_memory=True)
    return ds, (f"{spec.num_samples} samples of {spec.dataset} (split {spec.split}, seed {spec.seed}, "
                f"max length {spec.max_seq_length})")


def token_digest(ds, batch_size: int = 1024) -> tuple[str, int]:
    """(sha256 of every row of every column, in order; the number of tokens): what quantization reads, by content.

    Read from the Arrow data in batches, each column (token ids, attention mask) as two streams, its rows' lengths and
    their values as little-endian int64, so that any change to a row, to the number of rows or to their order
    changes the digest, and the batch size does not."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = sorted(ds.column_names)
    streams = {c: (hashlib.sha256(), hashlib.sha256()) for c in columns}
    rows = tokens = 0
    for batch in ds.with_format("arrow").iter(batch_size=batch_size):
        rows += batch.num_rows
        for c in columns:
            col = batch.column(c)
            if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) \
                    or not pa.types.is_integer(col.type.value_type):
                raise TypeError(f"calibration column {c!r} holds {col.type}, not lists of token ids")
            lengths, values = pc.list_value_length(col), pc.list_flatten(col)
            if col.null_count or values.null_count:
                raise ValueError(f"calibration column {c!r} has missing values")
            streams[c][0].update(lengths.to_numpy().astype("<i8").tobytes())
            streams[c][1].update(values.to_numpy().astype("<i8").tobytes())
            tokens += int(pc.sum(lengths).as_py() or 0) if c == "input_ids" else 0
    h = hashlib.sha256(f"quantflow calibration tokens v1\0{rows}\n".encode())
    for c in columns:
        h.update(f"{c}\0{streams[c][0].hexdigest()}\0{streams[c][1].hexdigest()}\n".encode())
    return h.hexdigest(), tokens


def save(ds, description: str, spec: CalibrationSpec, root: Path) -> CalibSet:
    """Save under a content digest of the token ids and attention masks (`token_digest`: the digest names the
    folder), once: under the folder's lock, written to a unique temporary name, renamed whole and stamped; a whole,
    intact copy is kept as it is."""
    from components import artifacts

    digest, num_tokens = token_digest(ds)
    out = root / digest[:16]
    calib = CalibSet(
        path=str(out),
        digest=digest,
        num_samples=len(ds),
        max_seq_length=spec.max_seq_length,
        num_tokens=num_tokens,
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


# --- preflight: every row of the dataset read once, against how it will be used -------------------------------------

@dataclass
class _Check:
    spec: CalibrationSpec
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check(spec: CalibrationSpec, base: BaseInfo | None) -> Checked[None]:
    """The calibration set before any work: where it is, its column, every row's value for the way it is used, enough
    rows, chat template or plain text as the model and the data allow, the sequence length the model takes. A bad row
    otherwise fails minutes later inside `build`. Problems: one line each, with the fix; notes: what is checked only
    when a Hub dataset is loaded. No value."""
    c = _Check(spec)
    try:
        _check(c, base)
    except Exception as e:  # noqa: BLE001 - a check that cannot run is itself a finding
        c.problems.append(f"calibration: {type(e).__name__}: {first_line(e)}")
    return Checked(problems=c.problems, notes=c.notes)


def _check(c: _Check, base: BaseInfo | None) -> None:
    spec = c.spec
    if base is not None and base.config is not None:
        limit = max_positions(base.config)
        if limit and spec.max_seq_length > limit:
            c.problems.append(f"calibration.max_seq_length {spec.max_seq_length} is above {base.name}'s "
                              f"max_position_embeddings {limit}: set it to {limit} or less")
    if spec.source == "random":
        return
    local = spec.dataset_path
    if local.is_file():
        _local_dataset(c, local, base)
    elif local.is_dir():
        try:
            _dataset_dir(c, base)
        except Exception as e:  # noqa: BLE001 - a check that cannot run is itself a finding
            c.problems.append(f"calibration.dataset {spec.dataset!r}: {type(e).__name__}: {first_line(e)}")
    elif looks_like_path(spec.dataset) or Path(spec.dataset).suffix in FILE_BUILDERS:
        c.problems.append(f"calibration.dataset {spec.dataset!r}: file not found")
    else:
        _hub_dataset(c, spec.dataset)


def _hub_dataset(c: _Check, dataset: str) -> None:
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(dataset)
    except HFValidationError as e:
        c.problems.append(f"calibration.dataset {dataset!r}: neither a local file/directory nor a Hub dataset id "
                          f"({first_line(e)})")
        return
    if constants.is_offline_mode() or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        hub_cache = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}"
        ds_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
        if not hub_cache.is_dir() and not any(ds_cache.glob(f"{dataset.replace('/', '___')}*")):
            c.problems.append(f"calibration.dataset {dataset!r}: not in the local cache and offline mode is on "
                              "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): download it once online, or give a local file")
        else:
            c.notes.append(f"calibration.dataset {dataset!r}: Hub dataset served from the cache; rows and columns are "
                           "checked when it is loaded")
        return
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        HfApi().dataset_info(dataset)
    except GatedRepoError:
        c.problems.append(f"calibration.dataset {dataset!r}: a gated dataset: accept its terms on the Hub and set HF_TOKEN")
        return
    except RepositoryNotFoundError:
        c.problems.append(f"calibration.dataset {dataset!r}: no such dataset on the Hub (or it is private: set HF_TOKEN)")
        return
    except Exception as e:  # noqa: BLE001
        c.problems.append(f"calibration.dataset {dataset!r}: cannot reach the Hub at {constants.ENDPOINT} "
                          f"({type(e).__name__}): check the network or proxy (HF_ENDPOINT), or set HF_HUB_OFFLINE=1 "
                          "with the dataset cached, or give a local file")
        return
    c.notes.append(f"calibration.dataset {dataset!r}: Hub dataset found; rows and columns are checked when it is loaded")


def _rows(path: Path) -> tuple[list[str], Iterator[tuple[int, Any]]]:
    """(columns, every (row number, row)) of a local json/jsonl/csv/parquet file, read as a stream where the format
    allows (JSON lines, parquet batches, csv), numbered as a person finds them (line for JSON lines, else from 1)."""
    suffix = path.suffix
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)

        def batches():
            n = 0
            for batch in pf.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    n += 1
                    yield n, row
        return list(pf.schema_arrow.names), batches()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            columns = next(csv.reader(f), [])

        def lines():
            with open(path, newline="", encoding="utf-8") as f:
                yield from enumerate(csv.DictReader(f), 1)
        return columns, lines()
    with open(path, encoding="utf-8") as f:
        head = f.read(1 << 16).lstrip()
    if head.startswith("["):  # one JSON array of rows
        rows = json.loads(path.read_text(encoding="utf-8"))
        first = rows[0] if rows else {}
        return (list(first) if isinstance(first, dict) else []), enumerate(rows, 1)
    if suffix == ".json" and head.startswith("{"):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            doc = None  # JSON lines in a .json file
        if isinstance(doc, dict):
            if doc and all(isinstance(v, list) for v in doc.values()):  # columns
                n = len(next(iter(doc.values())))
                return list(doc), ((i + 1, {k: v[i] if i < len(v) else None for k, v in doc.items()}) for i in range(n))
            return list(doc), iter([(1, doc)])
    first = None
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                first = _json_line(i, line)
                break

    def json_lines():
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    yield i, _json_line(i, line)
    return (list(first) if isinstance(first, dict) else []), json_lines()


def _json_line(i: int, line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError as e:
        raise ValueError(f"line {i} is not JSON ({e})") from None


def _local_dataset(c: _Check, path: Path, base: BaseInfo | None) -> None:
    spec = c.spec
    if path.suffix not in FILE_BUILDERS:
        c.problems.append(f"calibration.dataset {spec.dataset!r}: unsupported file type {path.suffix!r} "
                          f"(use {', '.join(FILE_BUILDERS)})")
        return
    unit = "line" if path.suffix in (".jsonl", ".json") else "row"
    try:
        columns, rows = _rows(path)
        _rows_columns(c, columns, rows, base, unit)
    except UnicodeDecodeError:
        c.problems.append(f"calibration.dataset {spec.dataset!r}: not UTF-8 text ({_first_non_utf8(path)}): "
                          "save it as UTF-8")
    except Exception as e:  # noqa: BLE001
        c.problems.append(f"calibration.dataset {spec.dataset!r}: cannot be read as {path.suffix} "
                          f"({type(e).__name__}: {first_line(e)})")


def _first_non_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 sits: 'line N, column C (byte 0x..)'."""
    with open(path, "rb") as f:
        for i, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"line {i}, column {e.start + 1} (byte 0x{line[e.start]:02x})"
    return "a multi-byte character cut at the end"


def _dataset_dir(c: _Check, base: BaseInfo | None) -> None:
    ds = load_raw(c.spec)
    _rows_columns(c, list(ds.column_names), enumerate(ds, 1), base, "row")


def _row_problem(value: Any, chat: bool) -> str | None:
    """What is wrong with one calibration value for the way it is used (None: nothing)."""
    if not chat:
        return None if isinstance(value, str) and value.strip() else f"text is {_kind(value)}, not a non-empty string"
    if not isinstance(value, list) or not value:
        return f"messages are {_kind(value)}, not a non-empty list of {{role, content}}"
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), (str, list)):
            return f"message {j} is {_kind(m) if not isinstance(m, dict) else 'missing a string role or content'}"
    return None


def _kind(value: Any) -> str:
    return "missing (null)" if value is None else "empty" if value in ("", [], {}) else f"a {type(value).__name__}"


def _rows_columns(c: _Check, columns: list[str], rows: Iterator[tuple[int, Any]], base: BaseInfo | None,
                  unit: str) -> None:
    """Count every row and check each one's value against how it is used; the first few bad rows are named."""
    spec = c.spec
    rows = iter(rows)
    head = next(rows, None)
    if head is None:
        c.problems.append(f"calibration.dataset {spec.dataset!r} is empty (no rows): give one with at least "
                          f"{spec.num_samples} rows (calibration.num_samples)")
        return
    rows = itertools.chain([head], rows)
    if spec.column not in columns:
        c.problems.append(f"calibration.column {spec.column!r} is not in {spec.dataset!r}"
                          f"{did_you_mean(spec.column, columns)} (columns: {', '.join(columns) or 'none'})")
        return
    n, first, bad, shown = 0, None, 0, []
    for i, row in rows:
        n += 1
        value = row.get(spec.column) if isinstance(row, dict) else None
        first = value if n == 1 else first
        problem = _row_problem(value, spec.apply_chat_template) if isinstance(row, dict) else f"{_kind(row)}, not an object"
        if problem:
            bad += 1
            if len(shown) < 3:
                shown.append(f"{unit} {i}: {problem}")
    if n < spec.num_samples:
        c.problems.append(f"calibration.dataset {spec.dataset!r} has {n} rows, calibration.num_samples is "
                          f"{spec.num_samples}: lower num_samples to {n} or less, or use a larger dataset")
    if spec.apply_chat_template:
        if isinstance(first, str):
            c.problems.append(f"calibration.column {spec.column!r} holds plain text, not chat messages: set "
                              "calibration.apply_chat_template: false, or choose a column of messages")
            return
        if base is not None and base.has_chat_template is False:
            c.problems.append(f"calibration.apply_chat_template is on but {base.name}'s tokenizer has no chat template: "
                              "set it to false and choose a text column, or use a model (or tokenizer) with a chat "
                              "template")
    elif isinstance(first, list):
        c.problems.append(f"calibration.column {spec.column!r} holds chat messages, not text: set "
                          "calibration.apply_chat_template: true, or choose a text column")
        return
    if bad:
        c.problems.append(f"calibration.dataset {spec.dataset!r}: {bad} row{'s' if bad != 1 else ''} of column "
                          f"{spec.column!r} cannot be used ({'; '.join(shown)}{'; ...' if bad > len(shown) else ''}): "
                          f"fix or drop {'them' if bad != 1 else 'it'}")
