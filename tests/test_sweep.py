"""Sweeps: three variants share one calibration build and one baseline evaluation; calibration settings as axes."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from prefect_states import task_states
from pydantic import ValidationError
from tiny import tiny_sweep

from flows.sweep import SweepSpec, calibration_label, sweep


def test_sweep_shares_calibration_and_baseline(tiny_model):
    spec = SweepSpec.model_validate(tiny_sweep(tiny_model, ["w8a8-int8", "w4a16", "fp8-dynamic"], calibration__seed=7,
                                               evaluation__limit=4, evaluation__seed=7))
    outcomes = sweep(spec)
    assert [o.name for o in outcomes] == ["tiny-llama-quantized.w8a8", "tiny-llama-quantized.w4a16", "tiny-llama-FP8-dynamic"]
    states = [task_states(o.flow_run_id) for o in outcomes]
    evaluations = [s for st in states for s in st["evaluate"]]
    # 3 variant evaluations + 1 baseline evaluation computed; the other two baselines come from cache.
    assert sorted(evaluations) == ["Cached", "Cached", "Completed", "Completed", "Completed", "Completed"]
    calibrations = [s for st in states for s in st.get("build_calibration", [])]
    assert calibrations == ["Completed", "Cached"]  # fp8-dynamic is data-free

    # MLflow: one parent run for the sweep, the variant runs nested under it, the comparison on the parent.
    client = mlflow.MlflowClient()
    parents = {client.get_run(o.mlflow_run_id).data.tags["mlflow.parentRunId"] for o in outcomes}
    [parent] = [client.get_run(p) for p in parents]
    assert parent.data.tags["quantflow.role"] == "sweep" and parent.data.tags["quantflow.prefect_flow_run_id"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"comparison.png", "comparison_table.json"}
    from components.comparison import variants

    assert [r["name"] for r in variants("tiny-llama")[1] if r["run_id"] in {o.mlflow_run_id for o in outcomes}] \
        == [o.name for o in outcomes]  # the parent is not a variant

    again = sweep(spec)
    for o in again:
        st = task_states(o.flow_run_id)
        assert set(st["evaluate"]) == {"Cached"} and set(st["quantize_checkpoint"]) == {"Cached"}
    assert [o.table for o in again] == [o.table for o in outcomes]
    assert {client.get_run(o.mlflow_run_id).data.tags["mlflow.parentRunId"] for o in again} == parents  # recorded once


def test_calibration_axes_make_one_variant_each(tmp_path):
    """Schemes x calibration settings; a data-free scheme once; names carry the axis values (no flow runs)."""
    data = tmp_path / "ultrachat-200k.jsonl"
    data.write_text("{}\n")
    spec = SweepSpec.model_validate({
        "base": {"source": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "schemes": ["w8a8-int8", "fp8-dynamic", "w4a16"],
        "calibration": {"num_samples": 32, "max_seq_length": 512},
        "calibrations": [{"num_samples": 64}, {"num_samples": 256, "max_seq_length": 2048}, {"dataset": str(data)}],
    })
    variants = spec.variants()
    assert [v.variant_name for v in variants] == [
        "SmolLM2-135M-Instruct-quantized.w8a8-n64-l512", "SmolLM2-135M-Instruct-quantized.w8a8-n256-l2048",
        "SmolLM2-135M-Instruct-quantized.w8a8-n32-l512-ultrachat_200k", None,
        "SmolLM2-135M-Instruct-quantized.w4a16-n64-l512", "SmolLM2-135M-Instruct-quantized.w4a16-n256-l2048",
        "SmolLM2-135M-Instruct-quantized.w4a16-n32-l512-ultrachat_200k"]
    assert [(v.calibration.num_samples, v.calibration.max_seq_length) for v in variants[:3]] == \
        [(64, 512), (256, 2048), (32, 512)]
    assert variants[2].calibration.dataset == str(data) and variants[3].scheme.value == "fp8-dynamic"
    assert [calibration_label(v) for v in variants[:4]] == ["64 x 512 chat", "256 x 2048 chat", "32 x 512 ultrachat_200k",
                                                             "data-free"]
    assert SweepSpec.model_validate({"schemes": ["fp8-dynamic"]}).variants()[0].variant_name is None  # no axes: as before


def test_sweep_spec_is_strict():
    with pytest.raises(ValidationError, match="unknown field 'calibraton': did you mean one of 'calibration', 'calibrations'"):
        SweepSpec.model_validate({"calibraton": {"num_samples": 8}})
    with pytest.raises(ValidationError, match="unknown field 'samples'"):
        SweepSpec.model_validate({"calibrations": [{"samples": 8}]})
    with pytest.raises(ValidationError, match="dispatch"):
        SweepSpec.model_validate({"dispatch": "cluster"})


def test_a_calibration_axis_sweep(tiny_model, tmp_path):
    """Two sample counts of one scheme: two calibration sets and checkpoints, one baseline, the counts in the table
    and each in its own card. Both counts are above five: the two sets share their first six rows.

    The suite is a file of one's own that reuses a shipped suite's name with one of its tasks: that task is what
    runs (the shipped suite of that name is never looked up)."""
    from components import artifacts
    from components.evaluation.suites import SUITES
    from flows.sweep import comparison

    suite = tmp_path / "smoke.yaml"
    suite.write_text(yaml.safe_dump({"name": "smoke", "description": "One task of the shipped smoke suite.",
                                     "include_path": str(SUITES.parent / "tasks"),
                                     "tasks": [{"task": "qf_facts", "label": "Facts (0-shot)", "metric": "acc"}]}))
    spec = SweepSpec.model_validate(tiny_sweep(tiny_model, ["w8a8-int8"], calibration__seed=5, evaluation__limit=4,
                                               evaluation__seed=5, evaluation__suite=str(suite),
                                               calibrations=[{"num_samples": 6}, {"num_samples": 8}]))
    outcomes = sweep(spec)
    assert [o.name for o in outcomes] == ["tiny-llama-quantized.w8a8-n6-l64", "tiny-llama-quantized.w8a8-n8-l64"]
    assert outcomes[0].checkpoint != outcomes[1].checkpoint
    digests = [artifacts.read_stamp(Path(o.checkpoint)).result["digest"] for o in outcomes]
    assert digests[0] != digests[1]
    for o, n in zip(outcomes, (6, 8), strict=True):
        assert Path(o.card).parent == Path(o.checkpoint) and f"num_calibration_samples={n}" in Path(o.card).read_text()
        assert [r.task for r in o.table.rows] == ["qf_facts"], "the suite file's task, not the shipped smoke suite's"
    states = [task_states(o.flow_run_id) for o in outcomes]
    assert [st["build_calibration"] for st in states] == [["Completed"], ["Completed"]]
    assert [st["quantize_checkpoint"] for st in states] == [["Completed"], ["Completed"]]
    assert sorted(s for st in states for s in st["evaluate"]) == ["Cached", "Completed", "Completed", "Completed"]
    assert "| Calibration (samples x tokens) | 6 x 64 chat | 8 x 64 chat |" in comparison(outcomes, spec.variants())
