"""Evaluation that fits vLLM's GPUs, checked at preflight (components/evaluation/fit.py): the seed cards' 70B models on
the machines they would run on, `tensor_parallel_size: auto`, and the workers' threads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components import recipes
from components.evaluation import fit, suites
from components.evaluation.command import EngineSettings
from components.evaluation.environment import engine_env
from components.memory_plan import Machine
from components.messages import Checked
from components.specs import EvalSpec
from tiny import config_only_base

CONFIG = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "Meta-Llama-3.1-70B-Instruct.json")
                    .read_text())
# what torch reports: an "80GB" H100 has 81,559 MiB, a "141GB" H200 143,771 MiB
H100 = 81_559 * 2**20
H200 = 143_771 * 2**20
SUITE = suites.load("openllm-v1-2024")


def machine(gpus: int, gpu_bytes: int) -> Machine:
    return Machine(gpus=gpus, gpu_bytes=gpu_bytes, host_bytes=2e12, disk_free_bytes=1e12)


def check(scheme: str, gpus: int, gpu_bytes: int, **ev):
    return fit.check(EvalSpec(**ev), CONFIG, recipes.load(scheme), SUITE, machine(gpus, gpu_bytes), "cuda", "vllm")


@pytest.mark.parametrize("gpu_bytes,name", [(H200, "H200"), (H100, "H100")])
def test_a_70b_bf16_base_at_tp_1_on_one_card_is_refused_with_the_numbers_and_the_fix(gpu_bytes, name):
    [problem] = check("fp8-static", 1, gpu_bytes, tensor_parallel_size=1).problems
    budget = 0.9 * gpu_bytes / 1e9
    assert problem.startswith(f"evaluation: the base model does not fit vLLM at tensor_parallel_size 1: 141.1 GB of "
                              f"weights / 1 + KV cache for 1 x 4096 tokens 1.3 GB + overhead 2.1 GB = 144.6 GB a GPU, "
                              f"more than 0.90 x {gpu_bytes / 1e9:,.1f} GB = {budget:,.1f} GB (1 GPU(s) here): use "
                              f"tensor_parallel_size 2 (or auto) on "), problem
    assert problem.endswith("such GPUs, or evaluation.reference_baseline (the base's published scores)"), problem
    # auto cannot find a fitting TP on one card either: the same line
    assert check("fp8-static", 1, gpu_bytes).problems == [problem]
    # the 72.7 GB INT8 variant alone fits one card at TP 1 (seed 002 evaluated it so)
    assert check("w8a8-int8", 1, gpu_bytes, tensor_parallel_size=1,
                 reference_baseline="Meta-Llama-3.1-70B-Instruct.openllm-v1-2024").problems == []


def test_auto_picks_the_smallest_tp_that_fits_what_will_run():
    # base and variant on 2 x H100: the 141 GB base needs two cards
    found = check("w8a8-int8", 2, H100)
    assert (found.value.tensor_parallel_size, found.problems) == (2, []), found.problems
    assert found.notes[0] == "evaluation.tensor_parallel_size auto: 2 (base and variant fit 2 GPU(s) of 85.5 GB)"
    # the FP8 variant alone (published baseline for the base) on one H200: one card
    found = check("fp8-static", 1, H200, reference_baseline="Meta-Llama-3.1-70B-Instruct.openllm-v1-2024")
    assert (found.value.tensor_parallel_size, found.problems) == (1, [])
    assert found.notes == ["evaluation.tensor_parallel_size auto: 1 (variant fit 1 GPU(s) of 150.8 GB)"]
    # 8 x H100: TP 2 for base and variant, the other six GPUs are data-parallel room lm-eval cannot use without Ray
    found = check("fp8-static", 8, H100)
    assert (found.value.tensor_parallel_size, found.problems) == (2, [])
    assert found.notes[1].startswith("evaluation: tensor_parallel_size 2 leaves room for 4 vLLM replicas on the 8 GPUs, "
                                     "but lm-eval's data_parallel_size needs Ray"), found.notes
    assert fit.data_parallel(2, 8) == 4


def test_an_explicit_tp_is_checked_and_cpu_or_hf_are_not_sized():
    assert check("fp8-static", 2, H100, tensor_parallel_size=2).problems == []
    found = fit.check(EvalSpec(), CONFIG, recipes.load("fp8-static"), SUITE, machine(0, 0), "cpu", "vllm")
    assert (found.value.tensor_parallel_size, found.problems) == (1, [])
    found = fit.check(EvalSpec(), CONFIG, recipes.load("fp8-static"), SUITE, machine(1, H200), "cuda", "hf")
    assert (found.value.tensor_parallel_size, found.problems) == (1, [])
    # a config the plan cannot read is not a problem of the spec: no check, TP 1, and a note saying so
    odd = {k: v for k, v in CONFIG.items() if k != "hidden_size"}
    found = fit.check(EvalSpec(), odd, recipes.load("fp8-static"), SUITE, machine(1, H200), "cuda", "vllm")
    assert (found.value.tensor_parallel_size, found.problems, found.notes) == (
        1, [], ["evaluation: no GPU fit check (the base's config has no 'hidden_size')"])


def test_the_spec_takes_auto_or_a_positive_number():
    from pydantic import ValidationError

    assert EvalSpec().tensor_parallel_size == "auto"
    assert EvalSpec(tensor_parallel_size=4).tensor_parallel_size == 4
    for bad in (0, "two", "Auto"):
        with pytest.raises(ValidationError):
            EvalSpec(tensor_parallel_size=bad)


def test_each_vllm_worker_gets_its_share_of_the_cores(monkeypatch):
    """vLLM starts one worker process a GPU; each gets cores / TP threads, not all of them (oversubscribed)."""
    monkeypatch.setenv("QUANTFLOW_NUM_THREADS", "16")
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)
    assert engine_env(EngineSettings(engine="vllm", platform="cuda", tensor_parallel_size=4))["OMP_NUM_THREADS"] == "4"
    assert engine_env(EngineSettings(engine="vllm", platform="cuda", tensor_parallel_size=1))["OMP_NUM_THREADS"] == "16"
    assert engine_env(EngineSettings(engine="vllm", platform="cpu"))["OMP_NUM_THREADS"] == "16"


def test_preflight_refuses_a_base_that_does_not_fit_before_any_quantization(tmp_path, monkeypatch):
    """A 70B (config.json and a tokenizer: preflight reads no weights) on one H200, as torch would count it: the
    evaluation fit is one of preflight's problems, so the flow stops before quantizing (it runs preflight first)."""
    import torch

    from components import memory_plan as mp
    from components.evaluation import engine, environment
    from components.preflight import PreflightError, preflight

    base = config_only_base(tmp_path / "llama-70b", CONFIG)
    monkeypatch.setattr(mp, "machine_now", lambda disk: machine(1, H200))
    monkeypatch.setattr(engine, "detect_platform", lambda: "cuda")
    monkeypatch.setattr(environment, "check", Checked)  # vLLM's environment in place, as on a GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PreflightError) as e:
        preflight({"base": {"source": str(base)}, "scheme": "fp8-static",
                   "calibration": {"source": "random", "num_samples": 8, "max_seq_length": 64},
                   "evaluation": {"engine": "vllm", "suite": "openllm-v1-2024"},
                   "stores": [{"kind": "local", "uri": str(tmp_path / "published")}]})
    assert any(p.startswith("evaluation: the base model does not fit vLLM at tensor_parallel_size 1: 141.1 GB")
               for p in e.value.problems), e.value.problems
