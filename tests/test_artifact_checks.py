"""Every cached result checks its own artifact (`artifact_problems()`), one shape for all five: what the cache module
(flows/cache.py `checked`) asks of a hit before the flow uses it."""
from __future__ import annotations

from pathlib import Path

import pytest

from components import artifacts
from components.calibration import CalibSet
from components.digests import stamp_dir
from components.evaluation.command import EngineSettings
from components.evaluation.runner import EvalResult
from components.evaluation.serving import ServingResult
from components.models import ModelRef
from components.outcomes import CARD, Checkpoint


def _made(out: Path, make, exclude: tuple[str, ...] = ()):
    """`out` made as the tasks make it: a temporary folder with one file, then `make(tmp, files)` gives the result,
    installed and stamped."""
    tmp = artifacts.partial(out)
    tmp.mkdir(parents=True)
    (tmp / "data.bin").write_bytes(b"x" * 1000)
    files = stamp_dir(tmp, exclude=exclude)
    result = make(out, files)
    artifacts.install(tmp, out, result, exclude=exclude, files=files)
    return result


def _calib(out: Path, files) -> CalibSet:
    return CalibSet(path=str(out), digest="d" * 64, num_samples=2, max_seq_length=8, num_tokens=16, description="x")


def _checkpoint(out: Path, files) -> Checkpoint:
    return Checkpoint(name="tiny-w8a8", path=str(out), digest="c" * 64, files=files)


def _eval(out: Path, files) -> EvalResult:
    return EvalResult(suite="smoke", suite_digest="s", settings=EngineSettings(engine="hf", platform="cpu"),
                      commands=[["lm_eval"]], scores={}, wall_s=1.0, output_dir=str(out), date="2026-12-04")


def _serving(out: Path, files) -> ServingResult:
    return ServingResult(output_tok_s=1, total_tok_s=1, requests_s=1, ttft_median_ms=1, ttft_p99_ms=1, tpot_median_ms=1,
                         completed=1, failed=0, engine_peak_mb=1, weights_gib=None, checkpoint_mb=1,
                         commands=[["vllm", "serve"], ["vllm", "bench", "serve"]], wall_s=1, output_dir=str(out))


def _base(out: Path, files) -> ModelRef:  # a user's own folder: no stamp beside it, the ref records its files
    return ModelRef(source=str(out), name="tiny", path=str(out), digest="b" * 64, files=files)


MADE = {"calibration set": _calib, "checkpoint": _checkpoint, "evaluation": _eval, "serving": _serving,
        "base model": _base}


@pytest.mark.parametrize("kind", MADE)
def test_each_result_finds_a_change_to_its_own_artifact(kind, tmp_path):
    result = _made(tmp_path / kind, MADE[kind])
    assert result.artifact_problems() == []
    (Path(tmp_path / kind) / "data.bin").write_bytes(b"x" * 10)
    assert result.artifact_problems() == ["data.bin has 10 bytes, 1000 recorded"]


@pytest.mark.parametrize("kind", [k for k in MADE if k != "base model"])
def test_a_stamp_of_another_result_is_not_this_artifact(kind, tmp_path):
    """The stamp holds the result that describes the folder: a cached result that names another is refused."""
    result = _made(tmp_path / kind, MADE[kind])
    other = result.model_copy(update={"digest": "e" * 64} if "digest" in type(result).model_fields else {"wall_s": 2.0})
    assert other.artifact_problems() == [f"{tmp_path / kind} now holds another artifact than the cached result describes"]


def test_a_checkpoint_is_hashed_in_full_its_card_is_not_part_of_it_and_its_name_may_differ(tmp_path):
    """What is evaluated is what is published: a same-size, same-mtime change is found; the card written later is not
    a difference; a cached checkpoint published under another variant's name is the same content."""
    import os

    out = tmp_path / "ckpt"
    checkpoint = _made(out, _checkpoint, exclude=(CARD,))
    (out / CARD).write_text("# card")
    renamed = checkpoint.model_copy(update={"name": "another-variant"})
    assert checkpoint.artifact_problems() == [] and renamed.artifact_problems() == []
    st = (out / "data.bin").stat()
    (out / "data.bin").write_bytes(b"y" * 1000)
    os.utime(out / "data.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert checkpoint.artifact_problems() == ["data.bin has another sha256 than recorded"]


def test_a_result_without_its_folder_or_stamp_says_so(tmp_path):
    serving = _made(tmp_path / "serving", _serving)
    artifacts.stamp_path(tmp_path / "serving").unlink()
    assert serving.artifact_problems() == [f"{tmp_path / 'serving'} has no stamp (never finished, or made before stamps)"]
    base = _base(tmp_path / "gone", [])
    assert base.artifact_problems() == [f"{tmp_path / 'gone'} is missing"]
