"""Same inputs, same outputs: quantization in fresh processes gives the same checkpoint bytes; the evaluation
engine's process gets the settings that make its scores repeat."""
import subprocess
import sys
from pathlib import Path

import pytest

from components import determinism
from components.evaluation.command import EngineSettings
from components.evaluation.environment import engine_env

ROOT = Path(__file__).resolve().parents[1]

_QUANTIZE = """
import sys
from pathlib import Path
from components import calibration, recipes
from components.quantize import quantize
from components.specs import CalibrationSpec
from transformers import AutoTokenizer
model, out = sys.argv[1], Path(sys.argv[2])
spec = CalibrationSpec(source="random", num_samples=8, max_seq_length=64, seed=3)
ds, description = calibration.build(spec, AutoTokenizer.from_pretrained(model))
calib = calibration.save(ds, description, spec, out.parent)
quantize(model, recipes.load("w8a8-int8"), calib.path, out, calib.num_samples, calib.max_seq_length)
"""


def _quantize_fresh(model: Path, out: Path) -> dict[str, str]:
    from components.digests import sha256_file

    subprocess.run([sys.executable, "-c", _QUANTIZE, str(model), str(out)], cwd=ROOT, check=True,
                   capture_output=True, timeout=900)
    return {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}


def test_quantizing_twice_in_fresh_processes_gives_the_same_bytes(tiny_model, tmp_path):
    first = _quantize_fresh(tiny_model, tmp_path / "a" / "ckpt")
    second = _quantize_fresh(tiny_model, tmp_path / "b" / "ckpt")
    assert "model.safetensors" in first and first == second


@pytest.fixture()
def restore_torch():
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield torch
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_make_deterministic_seeds_and_fixes_threads(restore_torch, monkeypatch):
    torch = restore_torch
    monkeypatch.setenv(determinism.THREADS_ENV, "1")
    determinism.make_deterministic()
    a = torch.rand(4)
    determinism.make_deterministic()
    assert torch.equal(a, torch.rand(4))
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()


def test_thread_count_is_the_machines_unless_set(monkeypatch):
    import os

    monkeypatch.delenv(determinism.THREADS_ENV, raising=False)
    assert determinism.num_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(determinism.THREADS_ENV, "3")
    assert determinism.thread_env() == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"}


def test_engine_process_gets_the_determinism_settings_unless_set(monkeypatch):
    monkeypatch.setenv(determinism.THREADS_ENV, "2")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    cpu = engine_env(EngineSettings(engine="vllm", platform="cpu"))
    assert (cpu["VLLM_ENABLE_V1_MULTIPROCESSING"], cpu["PYTHONHASHSEED"], cpu["OMP_NUM_THREADS"]) == ("0", "0", "2")
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in engine_env(EngineSettings(engine="vllm", platform="cuda"))
    monkeypatch.setenv("PYTHONHASHSEED", "7")  # what the user set wins
    assert engine_env(EngineSettings(engine="hf", platform="cpu"))["PYTHONHASHSEED"] == "7"

