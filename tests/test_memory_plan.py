"""The memory plan against the shipped config.json of the seed cards' 70B bases and of the embedded default."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.memory_plan import GB, Calibration, Machine, Quantization, advice, plan, shape_from_config, sizes

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
H200 = Machine(name="1 x H200", gpus=1, gpu_bytes=141 * GB, host_bytes=2000 * GB, disk_free_bytes=1000 * GB)
H100x2 = Machine(name="2 x H100 80GB", gpus=2, gpu_bytes=80 * GB, host_bytes=2000 * GB, disk_free_bytes=1000 * GB)
H100x8 = Machine(name="8 x H100 80GB", gpus=8, gpu_bytes=80 * GB, host_bytes=2000 * GB, disk_free_bytes=1000 * GB)
SEED_000 = (Calibration(num_samples=512, seq_len=4096), Quantization(weight_bits=8, gptq=False))  # FP8 static
SEED_002 = (Calibration(num_samples=1024, seq_len=8192), Quantization(weight_bits=8, gptq=True))  # W8A8 GPTQ


def shape(name: str):
    return shape_from_config(json.loads((CONFIGS / f"{name}.json").read_text()))


def test_shapes_count_the_published_parameters():
    assert shape("Meta-Llama-3.1-70B-Instruct").params == 70_553_706_496
    assert shape("Llama-3.3-70B-Instruct") == shape("Meta-Llama-3.1-70B-Instruct")
    assert shape("SmolLM2-135M-Instruct").params == 134_515_008  # tied embeddings counted once


def test_sizes_of_the_70b_steps():
    s = sizes(shape("Meta-Llama-3.1-70B-Instruct"), *SEED_002)
    assert s["weights"] / GB == pytest.approx(141.1, abs=0.1)
    assert s["cache_hidden"] / GB == pytest.approx(137.4, abs=0.1)  # 1024 x 8192 tokens x 8192 x 2 B, per layer
    assert s["cache_mask"] / GB == pytest.approx(137.4, abs=0.1)  # eager causal mask: 1024 x 8192^2 x 2 B
    assert s["cache_rotary"] / GB == pytest.approx(4.3, abs=0.1)  # cos, sin: 1024 x 2 x 8192 x 128 x 2 B
    assert s["activations"] / GB == pytest.approx(279.4, abs=0.1)
    assert s["hessians"] / GB == pytest.approx(4.9, abs=0.1)  # fp32, in_features^2 for each of the 7 linears
    assert s["checkpoint"] / GB == pytest.approx(72.7, abs=0.2)  # INT8 linears + bf16 embeddings and lm_head
    assert sizes(shape("Meta-Llama-3.1-70B-Instruct"), *SEED_000)["hessians"] == 0  # no GPTQ, no Hessians


@pytest.mark.parametrize("machine,seed,placement,offload,cuda0_gb,host_gb", [
    (H200, SEED_000, "sequential", "cuda", 62.0, 141.1),  # 141 GB of weights do not fit beside anything; 53 GB of cache do
    (H200, SEED_002, "sequential", "cpu", 39.9, 420.5),  # 279 GB of cache (half of it the causal mask) wait in host RAM
    (H100x2, SEED_000, "sequential", "cuda:1", 9.3, 141.1),  # the second card holds the cache, as llm-compressor advises
    (H100x2, SEED_002, "sequential", "cpu", 39.9, 420.5),
    (H100x8, SEED_000, "sequential", "cuda:1", 9.3, 141.1),  # 8 cards do not change what cuda:0 must hold
    (H100x8, SEED_002, "sequential", "cpu", 39.9, 420.5),
])
def test_the_seed_cards_on_gpu_machines(machine, seed, placement, offload, cuda0_gb, host_gb):
    p = plan(shape("Meta-Llama-3.1-70B-Instruct"), *seed, machine)
    assert p.fits and (p.placement, p.activation_offload) == (placement, offload), p.lines()
    assert p.devices["cuda:0"] / GB == pytest.approx(cuda0_gb, abs=0.1)
    assert p.host_peak_bytes / GB == pytest.approx(host_gb, abs=0.1)
    assert all(v <= machine.gpu_bytes * 0.9 for k, v in p.devices.items() if k.startswith("cuda")), p.devices


@pytest.mark.parametrize("machine", [H200, H100x2, H100x8])
@pytest.mark.parametrize("seed", [SEED_000, SEED_002])
def test_whole_model_placement_is_never_chosen_for_weights_larger_than_one_card(machine, seed):
    """llm-compressor's sequential pipeline runs everything on cuda:0: a device map spreading 141 GB of weights over
    several cards still puts a weight share, the cache, the Hessians and the workspace on cuda:0 (issue 21: ~107 GB
    for seed 000 on 8 x H100). The plan never spreads the model; one card must hold it all, else sequential."""
    p = plan(shape("Meta-Llama-3.1-70B-Instruct"), *seed, machine)
    assert p.weights_bytes > machine.gpu_bytes and p.placement == "sequential", p.lines()
    # a 70B-shaped model with 20 layers (35 GB) fits one H200 whole, beside seed 000's cache; not one H100
    raw = json.loads((CONFIGS / "Meta-Llama-3.1-70B-Instruct.json").read_text())
    small = shape_from_config({**raw, "num_hidden_layers": 20})
    assert plan(small, *SEED_000, H200).placement == "gpu"
    assert plan(small, *SEED_000, H100x8).placement == "sequential"


def test_a_calibration_larger_than_advised_is_warned_with_its_cost():
    seventy = shape("Meta-Llama-3.1-70B-Instruct")
    [warning] = advice(seventy, *SEED_002, plan(seventy, *SEED_002, H200))
    assert warning == ("calibration 1024 x 8192 tokens is more than llm-compressor's maintainers advise (256-512 "
                       "samples x 2048): the cache between layers holds 279.4 GB (peak host RAM 420.5 GB) and "
                       "calibration takes ~14.2 H200-hours (arithmetic); fewer or shorter samples cost less")
    advised = (Calibration(num_samples=512, seq_len=2048), SEED_000[1])
    assert advice(seventy, *advised, plan(seventy, *advised, H200)) == []
    for n, s in ((1024, 512), (256, 4096)):  # more samples, or longer ones, than advised: warned whatever the product
        calib = (Calibration(num_samples=n, seq_len=s), SEED_000[1])
        assert advice(seventy, *calib, plan(seventy, *calib, H200))[0].startswith(f"calibration {n} x {s} tokens")


def test_a_model_that_fits_goes_whole_onto_the_gpu():
    p = plan(shape("SmolLM2-135M-Instruct"), Calibration(num_samples=512, seq_len=2048), Quantization(weight_bits=8, gptq=True),
             Machine(gpus=1, gpu_bytes=24 * GB, host_bytes=64 * GB, disk_free_bytes=100 * GB))
    assert (p.placement, p.activation_offload) == ("gpu", "cuda")


def test_the_embedded_default_on_this_kind_of_machine():
    p = plan(shape("SmolLM2-135M-Instruct"), Calibration(num_samples=16, seq_len=512), Quantization(weight_bits=8, gptq=True),
             Machine(gpus=0, host_bytes=24 * 2**30, disk_free_bytes=50 * GB))
    assert p.fits and p.placement == "cpu" and p.host_peak_bytes < 1 * GB


def test_refuses_with_the_numbers_when_nothing_fits():
    small = Machine(gpus=1, gpu_bytes=48 * GB, host_bytes=64 * GB, disk_free_bytes=50 * GB)
    p = plan(shape("Llama-3.3-70B-Instruct"), *SEED_002, small)
    assert not p.fits and p.placement is None
    assert any("host RAM 64.0 GB cannot hold the model (141.1 GB) and the calibration activations (279.4 GB)" in x
               for x in p.problems), p.problems
    assert any("checkpoint needs ~72.7 GB on disk, 50.0 GB free" in x for x in p.problems), p.problems
    # at 8192 tokens a sample, one layer's attention scores alone are 26 GB: a 24 GB card cannot calibrate it
    p = plan(shape("Llama-3.3-70B-Instruct"), *SEED_002, small.model_copy(update={"gpu_bytes": 24 * GB}))
    assert p.placement is None and "needs 39.9 GB, more than a GPU's 24.0 GB" in p.problems[0], p.problems


@pytest.mark.parametrize("layers,samples,seq_len,gptq,measured_gib", [
    (4, 256, 2048, False, 11.4),  # fp8-static
    (4, 256, 2048, True, 26.6),  # w8a8-int8, device_map="auto"
    (1, 512, 4096, True, 18.9),  # w8a8-int8 at seed 000's calibration size
])
def test_whole_model_estimate_is_near_what_one_h200_measured(layers, samples, seq_len, gptq, measured_gib):
    """Peak GPU memory measured on one H200 (issue 12: llm-compressor 0.14, random-init 70B-shaped layers, the model
    whole on the GPU, activations in host RAM, llm-compressor's default): the plan's figure for the same placement
    is within 25% (it says 21.0 for the 26.6 measured). (The CPU-loaded, sequentially onloaded run measured 32.2 GiB
    where the plan says 12.3: not understood yet, docs/scaling.md.)"""
    raw = json.loads((CONFIGS / "Meta-Llama-3.1-70B-Instruct.json").read_text())
    s = sizes(shape_from_config({**raw, "num_hidden_layers": layers}), Calibration(num_samples=samples, seq_len=seq_len),
              Quantization(weight_bits=8, gptq=gptq))
    estimate = (s["weights"] + s["hessians"] + s["workspace"]) / 2**30
    assert estimate == pytest.approx(measured_gib, rel=0.25)
