"""A sweep of three variants: one calibration build, one baseline evaluation, then everything from cache."""
from __future__ import annotations

import mlflow
from prefect_states import task_states

from flows.sweep import SweepSpec, sweep


def test_sweep_shares_calibration_and_baseline(tiny_model):
    spec = SweepSpec.model_validate({
        "base": {"source": str(tiny_model)}, "schemes": ["w8a8-int8", "w4a16", "fp8-dynamic"],
        "calibration": {"num_samples": 8, "max_seq_length": 64, "seed": 7},
        "evaluation": {"engine": "hf", "limit": 4, "seed": 7},
    })
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
