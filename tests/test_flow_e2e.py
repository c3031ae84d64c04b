"""The whole flow on the tiny random Llama, through both environments, against the real Prefect and MLflow servers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components import recipes
from components.specs import VariantSpec
from prefect_states import task_states


def _spec(model: Path, scheme: str, **evaluation) -> VariantSpec:
    return VariantSpec.model_validate({
        "base": {"source": str(model)}, "scheme": scheme,
        "calibration": {"num_samples": 8, "max_seq_length": 128},
        "evaluation": {"limit": 8, "serving": {"num_prompts": 8, "output_len": 16, "max_model_len": 512}, **evaluation},
    })


def test_w8a8_on_vllm_then_cached(tiny_model):
    import mlflow
    from flows.quantize_variant import quantize_variant

    state = quantize_variant(_spec(tiny_model, "w8a8-int8"), return_state=True)
    outcome = state.result()
    assert outcome.engine == "vllm"
    card = Path(outcome.card).read_text()
    assert "--model vllm" in card and "| **Average" in card and "GPTQModifier" in card
    for row in outcome.table.rows:
        assert row.base == row.base  # a number, not NaN
    ckpt = Path(outcome.checkpoint)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (ckpt / "recipe.yaml").exists()
    # Serving speed beside accuracy: base and variant served alike, every request answered, in the card.
    for served in (outcome.speed.base, outcome.speed.variant):
        assert served.completed == 8 and served.failed == 0
        assert served.output_tok_s > 0 and served.ttft_median_ms > 0 and served.engine_peak_mb > 100
    assert outcome.speed.variant.checkpoint_mb > 0
    assert "### Serving speed and size" in card and f"vllm serve {outcome.name}" in card and "vllm bench serve" in card
    published = Path(outcome.published[0].uri.removeprefix("file://"))
    assert (published / "quantflow-manifest.json").exists() and (published / "README.md").exists()

    run = mlflow.get_run(outcome.mlflow_run_id)
    assert run.data.tags["quantflow.prefect_flow_run_id"] == str(state.state_details.flow_run_id)
    # MLflow's recipe is the checkpoint's recipe.yaml: the recipe as run, every pinned field kept (tests/test_replay.py)
    logged = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="recipe/recipe.yaml")
    assert Path(logged).read_text() == (ckpt / "recipe.yaml").read_text() == recipes.load("w8a8-int8").recipe_yaml
    assert any(k.endswith(".recovery") for k in run.data.metrics)
    assert run.data.metrics["serving.output_tok_s"] == round(outcome.speed.variant.output_tok_s, 1)  # as a person reads it
    assert run.inputs.dataset_inputs, "calibration set logged as an MLflow dataset input"
    children = mlflow.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert list(children["tags.quantflow.role"]) == ["baseline"]

    client = mlflow.MlflowClient()
    # other tests register versions of the same name (other specs): this run's is exactly one
    [version] = [v for v in client.search_model_versions(f"name = '{outcome.name}'") if v.run_id == run.info.run_id]
    assert version.source == f"{run.info.artifact_uri}/card"
    assert version.tags["quantflow.gate"] == outcome.gate.state.value  # the verdict's own string: PASSED, FAILED...
    assert version.tags["quantflow.uri.local"] == outcome.published[0].uri
    if outcome.gate.passed:
        assert client.get_model_version_by_alias(outcome.name, "candidate").version == version.version
    else:
        assert "candidate" not in version.aliases

    first = task_states(state.state_details.flow_run_id)
    assert first["evaluate"] == ["Completed", "Completed"]

    # Same spec again: every heavy task from cache, the same table, no second MLflow run.
    again = quantize_variant(_spec(tiny_model, "w8a8-int8"), return_state=True)
    states = task_states(again.state_details.flow_run_id)
    for name in ("resolve_base", "build_calibration", "quantize_checkpoint", "evaluate", "measure_serving"):
        assert set(states[name]) == {"Cached"}, (name, states[name])
    assert again.result().table == outcome.table
    assert again.result().mlflow_run_id == outcome.mlflow_run_id
    # One input changed (the scheme) shares base, calibration and baseline: tests/test_sweep.py.


def test_fp8_static_evaluates_with_hf_on_cpu(tiny_model):
    from flows.quantize_variant import quantize_variant

    outcome = quantize_variant(_spec(tiny_model, "fp8-static", limit=4))
    assert outcome.engine == "hf"
    card = Path(outcome.card).read_text()
    assert "--model hf" in card and "strategy: tensor" in card


def test_vllm_refused_for_fp8_static_on_cpu_before_any_work(tiny_model, data_root):
    from flows.quantize_variant import quantize_variant

    before = set((data_root / "home" / "checkpoints").glob("*")) if (data_root / "home" / "checkpoints").exists() else set()
    with pytest.raises(ValueError, match="cannot run scheme fp8-static"):
        quantize_variant(_spec(tiny_model, "fp8-static", engine="vllm"))
    after = set((data_root / "home" / "checkpoints").glob("*")) if (data_root / "home" / "checkpoints").exists() else set()
    assert before == after
