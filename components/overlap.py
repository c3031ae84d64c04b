"""Whether a variant's base evaluation runs beside its quantization, and on which GPUs (pure).

The base evaluation does not depend on the checkpoint, so it can start with quantization and be done by the time the
variant's evaluation needs it: on a 70B model that saves one full evaluation's wall time. It is worth it only when
the two do not compete: each on GPUs of its own. Quantization keeps to the first GPUs it needs, the base evaluation's
process sees the next ones (CUDA_VISIBLE_DEVICES); on a CPU-only machine both would share the same cores and RAM, so
`auto` keeps them in sequence there and only an explicit `true` overlaps them.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

from components.evaluation.command import EngineSettings
from components.memory_plan import HEADROOM, Machine, MemoryPlan, Settings


class Split(BaseModel):
    """The decision and the device split; no overlap leaves every device list empty (everything sees every GPU)."""

    overlap: bool = False
    base_first: bool = Field(False, description="evaluate the base before quantizing (GPUs, no overlap): whatever "
                                                "preflight could not foresee about the evaluation fails in minutes, "
                                                "not after hours of quantization")
    quantize_gpus: list[int] = Field(default_factory=list, description="the GPUs quantization keeps to")
    eval_gpus: list[int] = Field(default_factory=list, description="the GPUs the base evaluation's process sees")

    def note(self) -> str:
        if self.base_first:
            return ("evaluation.overlap_base: the base model is evaluated first, then the variant quantized (no GPUs "
                    "for both at once)")
        if not self.quantize_gpus and not self.eval_gpus:
            return "evaluation.overlap_base: the base evaluation runs while the variant is quantized, sharing the CPU"
        return (f"evaluation.overlap_base: the base evaluation runs on GPU(s) {_ids(self.eval_gpus)} while the variant "
                f"is quantized on GPU(s) {_ids(self.quantize_gpus) or 'none'}")


def _ids(gpus: list[int]) -> str:
    return ",".join(map(str, gpus))


def evaluation_gpus(engine: EngineSettings) -> int:
    """GPUs one evaluation takes: vLLM's tensor_parallel_size, one for hf on CUDA, none on CPU."""
    if engine.platform == "cpu":
        return 0
    return engine.tensor_parallel_size if engine.engine == "vllm" else 1


def quantization_gpus(memory: MemoryPlan | None, how: Settings, machine: Machine) -> int:
    """GPUs quantization takes as it will run: the whole model on as many as its peak needs at HEADROOM (all of them
    without a plan); one layer at a time on cuda:0, plus cuda:1 when the activations wait there (llm-compressor onloads
    to its main device whenever a GPU is visible, `cpu` placement included); none without a GPU."""
    if machine.gpus == 0:
        return 0
    if how.placement == "gpu":
        if memory is None or memory.placement != "gpu":
            return machine.gpus
        return max(1, math.ceil(memory.gpu_peak_bytes / (machine.gpu_bytes * HEADROOM)))
    return 2 if how.activation_offload == "cuda:1" else 1


def resolve(choice: Literal["auto"] | bool, memory: MemoryPlan | None, how: Settings, machine: Machine,
            eval_gpus: int, base_evaluated: bool = True) -> tuple[Split, list[str]]:
    """The spec's `evaluation.overlap_base` on this machine: the Split, and the problem when `true` cannot be honoured.

    auto: overlap when quantization's GPUs plus the evaluation's fit in machine.gpus (never without a GPU); true: the
    same on GPUs, a problem (with the numbers and the fix) when they do not fit, and both on the CPU without a GPU;
    false, or no base evaluation (published baseline scores stand in for it): in sequence. In sequence on GPUs, the
    base evaluation comes first (`base_first`)."""
    if not base_evaluated:
        return Split(), []
    if machine.gpus == 0:
        return (Split(overlap=True), []) if choice is True else (Split(), [])
    in_sequence = Split(base_first=True)  # on GPUs, the base evaluation goes first: it fails in minutes if it fails
    if choice is False:
        return in_sequence, []
    quant = quantization_gpus(memory, how, machine)
    if quant + eval_gpus <= machine.gpus:
        return Split(overlap=True, quantize_gpus=list(range(quant)),
                     eval_gpus=list(range(quant, quant + eval_gpus))), []
    if choice == "auto":
        return in_sequence, []
    if how.placement == "gpu" and memory is not None and memory.placement == "gpu":
        why = (f"the whole model, {memory.gpu_peak_bytes / 1e9:,.1f} GB at {HEADROOM:.0%} of "
               f"{machine.gpu_bytes / 1e9:,.1f} GB a GPU")
    else:
        why = f"placement {how.placement}" + (", activations on cuda:1" if how.activation_offload == "cuda:1" else "")
    return in_sequence, [f"evaluation.overlap_base true: quantization needs {quant} GPU(s) ({why}) and the base "
                     f"evaluation {eval_gpus}, {quant + eval_gpus} in all, more than the {machine.gpus} here: use "
                     f"auto or false, or a machine with {quant + eval_gpus} GPUs"]
