"""The base evaluation beside quantization (components/overlap.py): when it overlaps, on which GPUs, and, on the tiny
model, that a flow run does overlap the two task runs and gets the same table as one run in sequence."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prefect_states import task_spans
from tiny import tiny_spec

from components.evaluation.command import EngineSettings
from components.evaluation.environment import engine_env
from components.memory_plan import GB, Calibration, Machine, Quantization, plan, settings_for, shape_from_config
from components.overlap import Split, evaluation_gpus, resolve
from components.specs import QuantizationSpec, VariantSpec

ROOT = Path(__file__).resolve().parents[1]
LLAMA_70B = shape_from_config(json.loads((ROOT / "benchmarks" / "configs" / "Meta-Llama-3.1-70B-Instruct.json")
                                         .read_text()))
SEED_000 = (Calibration(num_samples=512, seq_len=4096), Quantization(weight_bits=8, gptq=False))  # FP8 static
SEED_002 = (Calibration(num_samples=1024, seq_len=8192), Quantization(weight_bits=8, gptq=True))  # W8A8 GPTQ
CPU_ONLY = Machine(gpus=0, host_bytes=64 * GB, disk_free_bytes=1000 * GB)
H200 = Machine(gpus=1, gpu_bytes=141 * GB, host_bytes=2000 * GB, disk_free_bytes=1000 * GB)
H100x8 = Machine(gpus=8, gpu_bytes=80 * GB, host_bytes=2000 * GB, disk_free_bytes=1000 * GB)


def decide(choice, seed, machine: Machine, eval_gpus: int, base_evaluated: bool = True) -> tuple[Split, list[str]]:
    """resolve() as preflight calls it: the 70B plan for `seed` on `machine`, its placement as quantize runs it."""
    memory = plan(LLAMA_70B, *seed, machine)
    return resolve(choice, memory, settings_for(QuantizationSpec(), memory, machine), machine, eval_gpus,
                   base_evaluated)


def test_without_a_gpu_auto_keeps_them_in_sequence_and_true_shares_the_cpu():
    assert decide("auto", SEED_000, CPU_ONLY, 0) == (Split(), [])
    assert decide(True, SEED_000, CPU_ONLY, 0) == (Split(overlap=True), [])  # explicit: allowed, no devices named
    assert decide(False, SEED_000, CPU_ONLY, 0) == (Split(), [])


def test_one_h200_has_no_room_for_both():
    """Seed sizes on one H200: quantization takes the card (one layer at a time on cuda:0), the evaluation needs one:
    in sequence, the base evaluation first, so that it fails (if it does) before hours of quantization."""
    for seed in (SEED_000, SEED_002):
        assert decide("auto", seed, H200, 1) == (Split(base_first=True), [])
        assert decide(False, seed, H200, 1) == (Split(base_first=True), [])
    assert Split(base_first=True).note() == ("evaluation.overlap_base: the base model is evaluated first, then the "
                                             "variant quantized (no GPUs for both at once)")
    # a published baseline: no base evaluation to put first
    assert decide("auto", SEED_000, H200, 1, base_evaluated=False) == (Split(), [])


def test_eight_h100s_quantize_on_the_first_and_evaluate_on_the_next():
    """Seed 000 on 8 x H100: one layer at a time on cuda:0, its 53 GB cache on cuda:1; TP 4 takes the next four."""
    split, problems = decide("auto", SEED_000, H100x8, 4)
    assert not problems and split.overlap
    assert (split.quantize_gpus, split.eval_gpus) == ([0, 1], [2, 3, 4, 5])
    assert not set(split.quantize_gpus) & set(split.eval_gpus)
    # seed 002's 279 GB cache waits in host RAM: quantization keeps to cuda:0 and the evaluation takes the next TP
    assert decide("auto", SEED_002, H100x8, 4)[0].eval_gpus == [1, 2, 3, 4]
    assert decide("auto", SEED_002, H100x8, 8) == (Split(base_first=True), [])  # 1 + 8 of 8: in sequence, base first
    # a published baseline stands in for the base evaluation: nothing to overlap, whatever the spec says
    assert decide(True, SEED_000, H100x8, 4, base_evaluated=False) == (Split(), [])


def test_true_without_room_is_one_line_with_the_numbers_and_the_fix():
    split, [problem] = decide(True, SEED_000, H200, 2)
    assert not split.overlap
    assert problem == ("evaluation.overlap_base true: quantization needs 1 GPU(s) (placement sequential) and the base "
                       "evaluation 2, 3 in all, more than the 1 here: use auto or false, or a machine with 3 GPUs")
    _, [problem] = decide(True, SEED_000, H100x8, 7)
    assert problem == ("evaluation.overlap_base true: quantization needs 2 GPU(s) (placement sequential, activations "
                       "on cuda:1) and the base evaluation 7, 9 in all, more than the 8 here: use auto or false, or a "
                       "machine with 9 GPUs"), problem


def test_the_evaluations_gpus_and_what_its_process_sees(monkeypatch):
    assert evaluation_gpus(EngineSettings(engine="vllm", platform="cuda", tensor_parallel_size=4)) == 4
    assert evaluation_gpus(EngineSettings(engine="hf", platform="cuda", tensor_parallel_size=4)) == 1
    assert evaluation_gpus(EngineSettings(engine="vllm", platform="cpu")) == 0
    s = EngineSettings(engine="vllm", platform="cuda")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert engine_env(s, [3, 4])["CUDA_VISIBLE_DEVICES"] == "3,4"
    assert "CUDA_VISIBLE_DEVICES" not in engine_env(s) and "CUDA_VISIBLE_DEVICES" not in engine_env(s, [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,6,7")  # this process's GPU 1 is the machine's GPU 5
    assert engine_env(s, [1, 2])["CUDA_VISIBLE_DEVICES"] == "5,6"


def test_the_spec_choice_is_strict():
    from pydantic import ValidationError

    assert VariantSpec().evaluation.overlap_base == "auto"
    for value in (True, False, "auto"):
        assert VariantSpec.model_validate({"evaluation": {"overlap_base": value}}).evaluation.overlap_base == value
    for value in ("yes", "true", 1, "Auto"):
        with pytest.raises(ValidationError):
            VariantSpec.model_validate({"evaluation": {"overlap_base": value}})


RUN = textwrap.dedent('''
    import os, sys
    from pathlib import Path

    from components.specs import VariantSpec
    from flows.quantize_variant import quantize_variant

    outcome = quantize_variant(VariantSpec.model_validate_json(os.environ["QF_SPEC"]))
    Path(sys.argv[1]).write_text(outcome.model_dump_json())
''')


@pytest.mark.skipif(not os.environ.get("PREFECT_API_URL") or not os.environ.get("QUANTFLOW_MLFLOW_TRACKING_URI"),
                    reason="needs the session's Prefect and MLflow servers (QUANTFLOW_TEST_SERVERS=1)")
def test_the_base_evaluation_runs_beside_quantization_with_the_same_table(tiny_model, tmp_path):
    """overlap_base true on CPU: the task runs "evaluate base" and "quantize w8a8-int8" overlap in time (as the
    Prefect server recorded them), and the table is the one a run in sequence gets (each in its own home: no cache)."""
    procs = {}
    for overlap in (True, False):
        home = tmp_path / f"home-{overlap}"
        spec = VariantSpec.model_validate(tiny_spec(tiny_model, variant_name=f"overlap-{str(overlap).lower()}",
                                                    evaluation__overlap_base=overlap,
                                                    stores=[{"kind": "local", "uri": str(tmp_path / "published")}]))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "QUANTFLOW_HOME": str(home), "QF_SPEC": spec.model_dump_json(),
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect-results")}
        with open(tmp_path / f"run-{overlap}.log", "w") as log:
            procs[overlap] = subprocess.Popen([sys.executable, "-c", RUN, str(tmp_path / f"outcome-{overlap}.json")],
                                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    for overlap, proc in procs.items():
        assert proc.wait(900) == 0, (tmp_path / f"run-{overlap}.log").read_text()[-4000:]
    together, in_turn = (json.loads((tmp_path / f"outcome-{o}.json").read_text()) for o in (True, False))

    spans = task_spans(together["flow_run_id"])
    (eval_start, eval_end), (quant_start, quant_end) = spans["evaluate base"], spans["quantize w8a8-int8"]
    assert eval_start < quant_end and quant_start < eval_end, spans
    spans = task_spans(in_turn["flow_run_id"])
    assert spans["quantize w8a8-int8"][1] <= spans["evaluate base"][0], "in sequence without overlap_base"
    assert together["table"] == in_turn["table"]
