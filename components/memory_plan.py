"""Memory plan for quantizing a model on a machine: what each device holds, and the placement that fits (pure).

llm-compressor calibrates layer by layer (its sequential pipeline) on its main device, cuda:0: the current decoder
layer, one batch's inputs and forward workspace and, for GPTQ, one fp32 Hessian per linear input; the rest of the model
can wait in host RAM (`set_onload_device`: the model is loaded on the CPU and each layer onloaded in turn) and the cache
of every sample's inputs to the next layer (hidden states, and with the eager attention calibration forces, the causal
mask and rotary cos/sin: `cache_parts`) on cuda:1, cuda:0 or the CPU (`sequential_offload_device`). The plan sizes
each of these from config.json and the calibration size, picks the fastest placement that fits each device, and
refuses with the numbers when none does. The cache figure is measured against llm-compressor on CPU
(tests/test_memory_plan_cache.py); the rest is arithmetic: docs/scaling.md says which is which.
"""
from __future__ import annotations

import ctypes.util
import math
import os
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

GB = 1e9
HEADROOM = 0.90  # share of a device's memory a plan may fill (allocator fragmentation, CUDA context, buffers)
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def _gb(b: float) -> str:
    return f"{b / GB:,.1f} GB"


class ModelShape(BaseModel):
    """The decoder-only transformer facts a memory plan needs, read from config.json."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    dtype_bytes: int = 2

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in_features, out_features) of each linear of one decoder layer (q, k, v, o, gate, up, down)."""
        h, i = self.hidden, self.intermediate
        return [(h, self.q_dim), (h, self.kv_dim), (h, self.kv_dim), (self.q_dim, h), (h, i), (h, i), (i, h)]

    @property
    def layer_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes()) + 2 * self.hidden  # + the two RMSNorms

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden
        return self.layers * self.layer_params + embed * (1 if self.tied_embeddings else 2) + self.hidden


def shape_from_config(config: dict) -> ModelShape:
    """A ModelShape from a Hugging Face config.json (Llama-style names; `head_dim` defaults to hidden / heads)."""
    heads = config["num_attention_heads"]
    return ModelShape(hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                      layers=config["num_hidden_layers"], heads=heads,
                      kv_heads=config.get("num_key_value_heads") or heads,
                      head_dim=config.get("head_dim") or config["hidden_size"] // heads, vocab=config["vocab_size"],
                      tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                      dtype_bytes=DTYPE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"), 2))


class Machine(BaseModel):
    gpus: int = Field(ge=0)
    gpu_bytes: float = Field(0, ge=0, description="memory of each GPU")
    host_bytes: float = Field(gt=0, description="host RAM")
    disk_free_bytes: float = Field(gt=0, description="free space where the checkpoint is written")
    name: str = ""


def gpu_possible() -> bool:
    """Whether torch could find a GPU here: a GPU device node (NVIDIA's, or ROCm's /dev/kfd, which torch's CUDA API also
    drives), NVIDIA's kernel driver loaded, or its user-space driver (libcuda, which creates missing nodes on first use)
    installed. None of them: no CUDA runtime can start, whatever torch is installed."""
    try:
        nodes = [n for n in os.listdir("/dev") if n.startswith("nvidia") or n == "kfd"]
    except OSError:
        nodes = []
    return bool(nodes) or Path("/proc/driver/nvidia").exists() or ctypes.util.find_library("cuda") is not None


def machine_now(disk: Path) -> Machine:
    """This machine: visible GPUs (the smallest card counts for all), host RAM, free disk where `disk` is; torch counts
    the GPUs, where any is possible."""
    import psutil

    gpus = 0
    if gpu_possible():
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu_bytes = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus)) if gpus else 0
    return Machine(gpus=gpus, gpu_bytes=gpu_bytes, host_bytes=psutil.virtual_memory().total,
                   disk_free_bytes=shutil.disk_usage(disk).free, name="this machine")


class Calibration(BaseModel):
    num_samples: int = Field(ge=0)
    seq_len: int = Field(ge=0)
    batch_size: int = Field(1, ge=1)


class Quantization(BaseModel):
    """What the scheme costs: weight width in the checkpoint, and whether GPTQ keeps Hessians."""

    weight_bits: int
    gptq: bool
    group_size: int | None = None  # None: one scale per output channel (or per tensor)


def quantization_of(scheme) -> Quantization:
    """What a scheme (components/recipes) costs: weight width, GPTQ or not, group size."""
    bits = 4 if "4" in scheme.weights else 8
    return Quantization(weight_bits=bits, gptq="GPTQModifier" in str(scheme.recipe), group_size=scheme.group_size)


Placement = Literal["gpu", "sequential", "cpu"]


class MemoryPlan(BaseModel):
    weights_bytes: float
    layer_bytes: float
    activation_cache_bytes: float = Field(description="the intermediates cache between layers: hidden states, eager "
                                                      "causal mask, rotary cos/sin, position ids (cache_parts)")
    mask_cache_bytes: float = 0.0
    hessian_bytes: float
    workspace_bytes: float
    checkpoint_bytes: float
    placement: Placement | None = Field(description="gpu: whole model on the GPU(s); sequential: model in host RAM, "
                                                    "one layer onloaded at a time; cpu: no GPU; None: nothing fits")
    activation_offload: str | None = Field(description="where the calibration activations wait between layers")
    devices: dict[str, float] = Field(default_factory=dict, description="bytes each device holds at its peak")
    gpu_peak_bytes: float = Field(description="the fullest GPU's peak (cuda:0 but where the cache alone is larger)")
    host_peak_bytes: float
    problems: list[str] = Field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.placement is not None and not self.problems

    def lines(self) -> list[str]:
        """The plan as a person reads it, sizes in GB."""
        out = [f"weights {_gb(self.weights_bytes)}, one layer {_gb(self.layer_bytes)}, calibration activations "
               f"{_gb(self.activation_cache_bytes)} (of which the causal mask {_gb(self.mask_cache_bytes)}), "
               f"GPTQ Hessians per layer {_gb(self.hessian_bytes)}, forward workspace "
               f"{_gb(self.workspace_bytes)}, checkpoint {_gb(self.checkpoint_bytes)}"]
        if self.placement:
            per_device = ", ".join(f"{k} {_gb(v)}" for k, v in self.devices.items())
            out.append(f"placement: {self.placement}, activations on {self.activation_offload}; peak {per_device}")
        return out + self.problems


def cache_parts(shape: ModelShape, calib: Calibration) -> dict[str, float]:
    """Bytes llm-compressor 0.14's sequential pipeline holds in its IntermediatesCache between two decoder layers, by
    kind (read from its source and measured on CPU by tests/test_memory_plan.py):

    - hidden: each sample's hidden states (s x hidden, model dtype); a layer's outputs replace its inputs batch by
      batch, so one copy, plus `in_flight`: one batch's outputs stored before its inputs are deleted;
    - mask: calibration forces eager attention (`calibration_forward_context`), so the traced graph carries the dense
      (batch, 1, s, s) causal mask in the model dtype to every layer: samples x s^2 x 2 B, as large as the hidden
      states when s equals the hidden size (8192 for a 70B Llama);
    - rotary: cos and sin, (1, s, head_dim) each per batch (computed from position ids shared by the batch);
    - positions: position ids, (1, s) int64 per batch.
    """
    b, n, s = shape.dtype_bytes, calib.num_samples, calib.seq_len
    batches = math.ceil(n / calib.batch_size) if n else 0
    return {"hidden": n * s * shape.hidden * b, "mask": n * s * s * b, "rotary": batches * 2 * s * shape.head_dim * b,
            "positions": batches * s * 8, "in_flight": min(calib.batch_size, n) * s * shape.hidden * b}


def sizes(shape: ModelShape, calib: Calibration, q: Quantization) -> dict[str, float]:
    """Bytes of each thing that has to fit somewhere."""
    b, h = shape.dtype_bytes, shape.hidden
    linears = shape.linear_shapes()
    cache = cache_parts(shape, calib)
    # A batch through one layer: its cached inputs onloaded (hidden states, mask, rotary) and its outputs; attention
    # projections and the MLP's three intermediates (bf16); the attention scores and their fp32 softmax (eager);
    # for GPTQ, the fp32 copy of a linear's input accumulated into its Hessian, and the solve's fp32 Hessian inverse
    # and weights.
    batch = min(calib.batch_size, max(calib.num_samples, 1))
    batch_tokens = batch * calib.seq_len
    share = batch / max(calib.num_samples, 1)
    onloaded = (cache["hidden"] + cache["mask"]) * share + cache["in_flight"]
    scores = batch * shape.heads * calib.seq_len ** 2 * (b + 4)  # attention scores and their fp32 softmax
    workspace = onloaded + batch_tokens * (4 * h + 3 * shape.intermediate) * b + scores
    if q.gptq:
        workspace += (batch_tokens * shape.intermediate * 4 + max(a * a for a, _ in linears) * 4
                      + max(a * o for a, o in linears) * 4)
    hessians = sum(a * a * 4 for a, _ in linears) if q.gptq else 0.0
    quantized_linears = sum(a * o for a, o in linears) * shape.layers
    scales = sum(o * (a // q.group_size if q.group_size else 1) for a, o in linears) * shape.layers * 2
    unquantized = shape.params - quantized_linears
    return {"weights": shape.params * b, "layer": shape.layer_params * b, "activations": sum(cache.values()),
            **{f"cache_{k}": v for k, v in cache.items()}, "hessians": hessians, "workspace": workspace,
            "checkpoint": quantized_linears * q.weight_bits / 8 + scales + unquantized * b}


# Scratch a run writes under QUANTFLOW_HOME besides the checkpoint (arithmetic, generous on purpose): one evaluated
# model's lm-eval outputs with every sample logged (--log_samples) and its serving results (openllm-v1's samples are
# under 1 GB); the container's own writes beside the home that count against the same ephemeral storage (compile
# caches, /tmp, logs); and a 10% margin over the sum, as preflight's free-disk check.
EVAL_OUTPUT_BYTES = 5 * GB
CONTAINER_BYTES = 20 * GB
DISK_MARGIN = 1.10


def disk_needed(shape: ModelShape, calib: Calibration, q: Quantization, converted: bool = False,
                local_copies: int = 0, evaluations: int = 2) -> float:
    """Bytes of scratch one variant run needs where QUANTFLOW_HOME is (a pod's emptyDir): the bf16 copy of the base
    when it is converted there (GGUF; a Hub download lands in the HF cache, not here), the checkpoint and each local
    store's copy of it, the tokenized calibration set (input ids and attention mask, int64), each evaluated model's
    outputs (base and variant; the variant alone with a published baseline) and the container's own writes, plus
    DISK_MARGIN."""
    s = sizes(shape, calib, q)
    need = (s["weights"] if converted else 0.0) + s["checkpoint"] * (1 + local_copies) \
        + calib.num_samples * calib.seq_len * 16 + evaluations * EVAL_OUTPUT_BYTES + CONTAINER_BYTES
    return need * DISK_MARGIN


# Calibration size llm-compressor's maintainers advise: its examples start at 256-512 samples x 2048 tokens, and they
# call 1024 samples "excessively high" (vllm-project/llm-compressor issue #2039, 2025-12-17).
ADVISED_SAMPLES, ADVISED_SEQ_LEN = 512, 2048
# Calibration seconds per 70B-shaped decoder layer per 0.5 M calibration tokens, measured on one H200 (issue 12,
# docs/scaling.md): scaled by layer size for other models; arithmetic, not a promise.
H200_S_PER_LAYER_PER_HALF_M = {False: 13.9, True: 40.0}
_LLAMA_70B_LAYER_PARAMS = 855_654_400


def hours(shape: ModelShape, calib: Calibration, q: Quantization) -> float:
    """Calibration time on one H200, arithmetic from the measured rate (linear in tokens and layer size)."""
    tokens = calib.num_samples * calib.seq_len
    per_layer = H200_S_PER_LAYER_PER_HALF_M[q.gptq] * tokens / 524_288 * shape.layer_params / _LLAMA_70B_LAYER_PARAMS
    return per_layer * shape.layers / 3600


def advice(shape: ModelShape, calib: Calibration, q: Quantization, memory: "MemoryPlan") -> list[str]:
    """A warning when the calibration is larger than llm-compressor's maintainers advise, with what it costs here."""
    if calib.num_samples <= ADVISED_SAMPLES and calib.seq_len <= ADVISED_SEQ_LEN:
        return []
    return [f"calibration {calib.num_samples} x {calib.seq_len} tokens is more than llm-compressor's maintainers "
            f"advise (256-{ADVISED_SAMPLES} samples x {ADVISED_SEQ_LEN}): the cache between layers holds "
            f"{_gb(memory.activation_cache_bytes)} (peak host RAM {_gb(memory.host_peak_bytes)}) and calibration "
            f"takes ~{hours(shape, calib, q):,.1f} H200-hours (arithmetic); fewer or shorter samples cost less"]


def plan(shape: ModelShape, calib: Calibration, q: Quantization, machine: Machine) -> MemoryPlan:
    """The fastest placement llm-compressor can honour, planned per device. Everything llm-compressor's sequential
    pipeline runs goes to its main device, cuda:0 (`set_onload_device(model, cuda:0)`): the layer being calibrated,
    its Hessians, a batch's workspace, and the activation cache when it waits on "cuda". So the whole model goes on
    the GPU only when it fits beside all that on cuda:0 alone (a device map spreading it over several cards would give
    cuda:0 its share of the weights too); else the model waits in host RAM, one layer onloaded at a time, with the
    activations on cuda:1 (llm-compressor's advice with two GPUs or more), beside the layer on cuda:0, or in host RAM,
    the first of these that fits. Each device gets at most HEADROOM of its memory."""
    s = sizes(shape, calib, q)
    per_layer = s["layer"] + s["hessians"] + s["workspace"]
    gpu_room = machine.gpu_bytes * HEADROOM
    host_room = machine.host_bytes * HEADROOM
    problems: list[str] = []
    placement: Placement | None = None
    offload = "cpu"
    devices: dict[str, float] = {}

    if machine.gpus == 0:
        devices = {"cpu": s["weights"] + s["activations"] + s["hessians"] + s["workspace"]}
        placement = "cpu"
        if devices["cpu"] > host_room:
            placement = None
            problems.append(f"no GPU, and host RAM {_gb(machine.host_bytes)} cannot hold the weights, activations and "
                            f"Hessians ({_gb(devices['cpu'])}): use a GPU machine, or fewer/shorter calibration samples")
    else:
        whole = s["weights"] + s["hessians"] + s["workspace"] + s["activations"]
        if whole <= gpu_room:
            placement, offload = "gpu", "cuda"
            devices = {"cuda:0": whole, "cpu": s["layer"]}  # loading streams the weights through one shard
        elif per_layer <= gpu_room:
            placement = "sequential"
            if machine.gpus > 1 and s["activations"] <= gpu_room:
                offload = "cuda:1"
                devices = {"cuda:0": per_layer, "cuda:1": s["activations"], "cpu": s["weights"]}
            elif per_layer + s["activations"] <= gpu_room:
                offload = "cuda"
                devices = {"cuda:0": per_layer + s["activations"], "cpu": s["weights"]}
            else:
                devices = {"cuda:0": per_layer, "cpu": s["weights"] + s["activations"]}
            if devices["cpu"] > host_room:
                placement = None
                problems.append(f"host RAM {_gb(machine.host_bytes)} cannot hold the model ({_gb(s['weights'])})"
                                + (f" and the calibration activations ({_gb(s['activations'])})" if offload == "cpu" else "")
                                + ": use a bigger host, or fewer/shorter calibration samples")
        else:
            problems.append(f"one decoder layer with its Hessians and a batch's workspace needs {_gb(per_layer)}, "
                            f"more than a GPU's {_gb(machine.gpu_bytes)}: use a bigger GPU or a smaller batch_size")
    if s["checkpoint"] > machine.disk_free_bytes:
        problems.append(f"the checkpoint needs ~{_gb(s['checkpoint'])} on disk, {_gb(machine.disk_free_bytes)} free")
    gpu_peak = max((v for k, v in devices.items() if k.startswith("cuda")), default=0.0)
    return MemoryPlan(weights_bytes=s["weights"], layer_bytes=s["layer"], activation_cache_bytes=s["activations"],
                      mask_cache_bytes=s["cache_mask"], hessian_bytes=s["hessians"], workspace_bytes=s["workspace"],
                      checkpoint_bytes=s["checkpoint"], placement=placement,
                      activation_offload=offload if placement else None, devices=devices if placement else {},
                      gpu_peak_bytes=gpu_peak if placement else 0.0,
                      host_peak_bytes=devices.get("cpu", 0.0) if placement else 0.0, problems=problems)


class Settings(BaseModel):
    """What `quantize` runs with: the spec's choices with `auto` replaced by the plan's."""

    placement: Placement
    activation_offload: str
    pipeline: str | None  # None: llm-compressor's default
    batch_size: int


def settings_for(spec, memory: MemoryPlan | None, machine: Machine) -> Settings:
    """The spec's QuantizationSpec resolved against the plan (an explicit choice always wins; without a plan,
    llm-compressor's defaults: model in host RAM, activations on the CPU)."""
    planned = memory.placement if memory else None
    placement = planned or ("cpu" if machine.gpus == 0 else "sequential")
    placement = placement if spec.placement == "auto" else spec.placement
    offload = (memory.activation_offload if memory else None) or "cpu"
    offload = offload if spec.activation_offload == "auto" else spec.activation_offload
    if machine.gpus == 0:
        offload = "cpu"
    return Settings(placement=placement, activation_offload=offload,
                    pipeline=None if spec.pipeline == "auto" else spec.pipeline, batch_size=spec.batch_size)
