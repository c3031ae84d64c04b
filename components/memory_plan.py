"""Memory plan for quantizing a model on a machine: what has to fit where, and the placement that makes it fit (pure).

llm-compressor calibrates layer by layer (its sequential pipeline): the current decoder layer, the cached inputs of
every calibration sample to that layer, one batch's forward workspace and, for GPTQ, one fp32 Hessian per linear input
must be on the GPU at once; the rest of the model can wait in host RAM (`set_onload_device`: the model is loaded on the
CPU and each layer onloaded in turn) and the activation cache can be offloaded (`sequential_offload_device`). The plan
sizes each of these from config.json and the calibration size, picks the fastest placement that fits, and refuses with
the numbers when none does. Figures are arithmetic, not measurements: docs/scaling.md puts them beside measured ones.
"""
from __future__ import annotations

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


def machine_now(disk: Path) -> Machine:
    """This machine: visible GPUs (the smallest card counts for all), host RAM, free disk where `disk` is."""
    import psutil
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
    activation_cache_bytes: float
    hessian_bytes: float
    workspace_bytes: float
    checkpoint_bytes: float
    placement: Placement | None = Field(description="gpu: whole model on the GPU(s); sequential: model in host RAM, "
                                                    "one layer onloaded at a time; cpu: no GPU; None: nothing fits")
    activation_offload: str | None = Field(description="where the calibration activations wait between layers")
    gpu_peak_bytes: float
    host_peak_bytes: float
    problems: list[str] = Field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.placement is not None and not self.problems

    def lines(self) -> list[str]:
        """The plan as a person reads it, sizes in GB."""
        out = [f"weights {_gb(self.weights_bytes)}, one layer {_gb(self.layer_bytes)}, calibration activations "
               f"{_gb(self.activation_cache_bytes)}, GPTQ Hessians per layer {_gb(self.hessian_bytes)}, forward workspace "
               f"{_gb(self.workspace_bytes)}, checkpoint {_gb(self.checkpoint_bytes)}"]
        if self.placement:
            out.append(f"placement: {self.placement}, activations on {self.activation_offload}; peak GPU "
                       f"{_gb(self.gpu_peak_bytes)}, peak host {_gb(self.host_peak_bytes)}")
        return out + self.problems


def sizes(shape: ModelShape, calib: Calibration, q: Quantization) -> dict[str, float]:
    """Bytes of each thing that has to fit somewhere."""
    b, h = shape.dtype_bytes, shape.hidden
    linears = shape.linear_shapes()
    tokens = calib.num_samples * calib.seq_len
    # One copy of the cache: llm-compressor replaces each batch's inputs by its outputs as it goes.
    activations = tokens * h * b
    # A batch through one layer: attention projections and the MLP's three intermediates (bf16); the attention scores
    # and their fp32 softmax (the traced graph passes an explicit mask, so SDPA takes its math kernel); for GPTQ, the
    # fp32 copy of a linear's input accumulated into its Hessian, and the solve's fp32 Hessian inverse and weights.
    batch = min(calib.batch_size, max(calib.num_samples, 1))
    batch_tokens = batch * calib.seq_len
    workspace = batch_tokens * (4 * h + 3 * shape.intermediate) * b + batch * shape.heads * calib.seq_len ** 2 * (b + 4)
    if q.gptq:
        workspace += batch_tokens * shape.intermediate * 4 + max(a * a for a, _ in linears) * 4 + max(a * o for a, o in linears) * 4
    hessians = sum(a * a * 4 for a, _ in linears) if q.gptq else 0.0
    quantized_linears = sum(a * o for a, o in linears) * shape.layers
    scales = sum(o * (a // q.group_size if q.group_size else 1) for a, o in linears) * shape.layers * 2
    unquantized = shape.params - quantized_linears
    return {"weights": shape.params * b, "layer": shape.layer_params * b, "activations": activations,
            "hessians": hessians, "workspace": workspace,
            "checkpoint": quantized_linears * q.weight_bits / 8 + scales + unquantized * b}


def plan(shape: ModelShape, calib: Calibration, q: Quantization, machine: Machine) -> MemoryPlan:
    """The fastest placement that fits: everything on the GPU(s); else the model in host RAM with one layer onloaded
    at a time and the activations on a second GPU, beside the layer, or in host RAM, the first of these that fits."""
    s = sizes(shape, calib, q)
    per_layer = s["layer"] + s["hessians"] + s["workspace"]
    gpu_room = machine.gpu_bytes * HEADROOM
    host_room = machine.host_bytes * HEADROOM
    problems: list[str] = []
    placement: Placement | None = None
    offload = "cpu"
    gpu_peak = host_peak = 0.0

    if machine.gpus == 0:
        host_peak = s["weights"] + s["activations"] + s["hessians"] + s["workspace"]
        placement = "cpu"
        if host_peak > host_room:
            placement = None
            problems.append(f"no GPU, and host RAM {_gb(machine.host_bytes)} cannot hold the weights, activations and "
                            f"Hessians ({_gb(host_peak)}): use a GPU machine, or fewer/shorter calibration samples")
    else:
        total_gpu = gpu_room * machine.gpus
        whole = s["weights"] + s["hessians"] + s["workspace"]
        if whole + s["activations"] <= total_gpu:
            placement, offload, gpu_peak = "gpu", "cuda", whole + s["activations"]
            host_peak = s["layer"]  # loading streams the weights through one shard's worth of host memory
        elif per_layer <= gpu_room:
            placement = "sequential"
            if machine.gpus > 1 and s["activations"] <= gpu_room:
                offload, gpu_peak = "cuda:1", per_layer
            elif per_layer + s["activations"] <= gpu_room:
                offload, gpu_peak = "cuda", per_layer + s["activations"]
            else:
                gpu_peak = per_layer
            host_peak = s["weights"] + (s["activations"] if offload == "cpu" else 0)
            if host_peak > host_room:
                placement = None
                problems.append(f"host RAM {_gb(machine.host_bytes)} cannot hold the model ({_gb(s['weights'])})"
                                + (f" and the calibration activations ({_gb(s['activations'])})" if offload == "cpu" else "")
                                + ": use a bigger host, or fewer/shorter calibration samples")
        else:
            problems.append(f"one decoder layer with its Hessians and a batch's workspace needs {_gb(per_layer)}, "
                            f"more than a GPU's {_gb(machine.gpu_bytes)}: use a bigger GPU or a smaller batch_size")
    if s["checkpoint"] > machine.disk_free_bytes:
        problems.append(f"the checkpoint needs ~{_gb(s['checkpoint'])} on disk, {_gb(machine.disk_free_bytes)} free")
    return MemoryPlan(weights_bytes=s["weights"], layer_bytes=s["layer"], activation_cache_bytes=s["activations"],
                      hessian_bytes=s["hessians"], workspace_bytes=s["workspace"], checkpoint_bytes=s["checkpoint"],
                      placement=placement, activation_offload=offload if placement else None,
                      gpu_peak_bytes=gpu_peak, host_peak_bytes=host_peak, problems=problems)


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
