"""Serving benchmark: the commands run (and printed in the card), the comparison's directions, the card section.

The real measurement (vllm serve + vllm bench serve on the tiny model) runs in tests/test_flow_e2e.py.
"""
from __future__ import annotations

import pytest

from components.card.render import render, serving_table
from components.evaluation.command import EngineSettings
from components.evaluation.serving import ServingResult, Speed, bench_command, checkpoint_mb, serve_command
from components.specs import ServingSpec
from test_card import MODEL_ID, facts

SPEC = ServingSpec(num_prompts=8, max_concurrency=2, output_len=16, max_model_len=512, seed=3)


def result(model: str, **over) -> ServingResult:
    values = dict(output_tok_s=100.0, total_tok_s=150.0, requests_s=2.0, ttft_median_ms=200.0, ttft_p99_ms=300.0,
                  tpot_median_ms=40.0, completed=8, failed=0, engine_peak_mb=4000.0, weights_gib=None, checkpoint_mb=270.0,
                  commands=[serve_command(model, EngineSettings(engine="vllm", platform="cuda"), SPEC, 8000),
                            bench_command(model, SPEC, 8000, "/out")], wall_s=60.0)
    return ServingResult(**{**values, **over})


def test_commands_carry_the_engine_settings_and_the_fixed_load():
    cpu = serve_command("/m", EngineSettings(engine="vllm", platform="cpu", tensor_parallel_size=1), SPEC, 8123)
    assert cpu[:3] == ["vllm", "serve", "/m"] and "--enforce-eager" in cpu
    assert cpu[cpu.index("--max-model-len") + 1] == "512" and cpu[cpu.index("--port") + 1] == "8123"
    gpu = serve_command("/m", EngineSettings(engine="vllm", platform="cuda", tensor_parallel_size=2,
                                             gpu_memory_utilization=0.8), SPEC, 8123)
    assert "--enforce-eager" not in gpu and gpu[gpu.index("--tensor-parallel-size") + 1] == "2"
    assert gpu[gpu.index("--gpu-memory-utilization") + 1] == "0.8"
    bench = bench_command("/m", SPEC, 8123, "/out")
    assert bench[:3] == ["vllm", "bench", "serve"] and "--ignore-eos" in bench
    pairs = {k: bench[bench.index(k) + 1] for k in ("--num-prompts", "--max-concurrency", "--custom-output-len",
                                                      "--dataset-name", "--base-url", "--seed")}
    assert pairs == {"--num-prompts": "8", "--max-concurrency": "2", "--custom-output-len": "16", "--dataset-name": "custom",
                     "--base-url": "http://127.0.0.1:8123", "--seed": "3"}


def test_gain_is_above_one_when_the_variant_is_better_in_either_direction():
    speed = Speed(base=result("/b"), variant=result("/q", output_tok_s=150.0, ttft_median_ms=100.0, checkpoint_mb=135.0,
                                                    engine_peak_mb=5000.0))
    rows = {r.label: r for r in speed.rows()}
    assert rows["Output throughput"].ratio == pytest.approx(1.5)
    assert rows["Time to first token (median)"].ratio == pytest.approx(2.0)  # lower is better
    assert rows["Checkpoint size (weights)"].ratio == pytest.approx(2.0)
    assert rows["Engine peak memory (PSS)"].ratio == pytest.approx(0.8)
    assert "Weights in GPU memory" not in rows  # only where vLLM reports it
    with_gpu = Speed(base=result("/b", weights_gib=2.0), variant=result("/q", weights_gib=1.0))
    assert {r.label: r.ratio for r in with_gpu.rows()}["Weights in GPU memory"] == pytest.approx(2.0)
    assert Speed(base=result("/b", output_tok_s=0.0), variant=result("/q")).rows()[0].ratio is None


def test_checkpoint_size_counts_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * (3 << 20))
    (tmp_path / "README.md").write_bytes(b"\0" * (5 << 20))
    assert checkpoint_mb(tmp_path) == pytest.approx(3.0)


def test_card_shows_speed_and_the_commands_with_the_published_id(tmp_path):
    f = facts(tmp_path)
    local = "/data/ckpt/Meta-Llama-3.1-70B-Instruct-FP8"
    f = f.model_copy(update={"speed": Speed(base=result("/base"), variant=result(local, output_tok_s=180.0))})
    card = render(f, MODEL_ID)
    assert "### Serving speed and size" in card
    assert "| Output throughput (tok/s) | 100.0 | 180.0 | 1.80x |" in card
    assert f"vllm serve {MODEL_ID}" in card and "vllm bench serve" in card and local not in card
    assert serving_table(f.speed, f.base.name, f.name) in card
    assert "--dataset-path components/evaluation/serving_prompts.jsonl" in card and "--result-dir ." in card
    assert "### Serving speed and size" not in render(facts(tmp_path))  # no measurement, no section
