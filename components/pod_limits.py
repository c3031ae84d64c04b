"""The pod a variant runs in: its size from the memory plan, and the limits it finds itself under.

A Kubernetes pod gets what it requests, and is killed (memory) or evicted (ephemeral storage) past its limits, whatever
the node has. So a variant dispatched to a GPU pool asks for what its plan needs (`size_for`: job variables of
infra/k8s/base-job-template.json), and preflight, inside the pod, checks the plan against the pod's own limits where
they are lower than the node's: the cgroup's memory limit (v2 `memory.max`, v1 `memory/memory.limit_in_bytes`), and the
scratch volume's size from QUANTFLOW_SCRATCH_LIMIT, which the job template sets from the same job variable as the
emptyDir's sizeLimit (a pod cannot read that from inside). Readers take the cgroup root and the environment as
parameters, so tests feed fake trees.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, field_validator, model_validator

from components import overlap
from components.memory_plan import GB, HEADROOM, Machine, MemoryPlan, Settings
from components.messages import Checked
from components.settings import existing, settings
from components.specs import StrictModel

GiB = 1 << 30
CGROUP = Path("/sys/fs/cgroup")
SCRATCH_ENV = "QUANTFLOW_SCRATCH_LIMIT"
# Host memory a pod needs beside the plan's peak: the memory-backed /dev/shm (the template's shm_size default, 16Gi,
# is charged to the pod's memory cgroup as it fills) and the processes themselves (Python, torch, tokenizer, vLLM's
# engine and lm-eval): arithmetic, generous on purpose.
SHM_BYTES = 16 * GiB
PROCESS_BYTES = 8 * GiB
UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as the largest page-aligned int64
FIX = "or run it through the sweep with gpu_node set, which sizes pods"

_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(text: str) -> int:
    """Bytes of a Kubernetes quantity ("800Gi", "2000G", "81559Mi", "1.5Ti", "1073741824")."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?\s*", str(text))
    if not m:
        raise ValueError(f"{text!r} is not a Kubernetes quantity: give bytes with a unit, e.g. 800Gi, 2000G or 81559Mi")
    return math.ceil(float(m[1]) * _UNITS[m[2] or ""])


def gi(n: float) -> str:
    """Bytes as a Kubernetes quantity, rounded up to a whole Gi."""
    return f"{math.ceil(n / GiB)}Gi"


class GpuNode(StrictModel):
    """The GPU node type the variant pods run on, as Kubernetes and nvidia-smi report it: each pod is sized from the
    memory plan on such a node, and refused before dispatch when even a whole node cannot hold it. All four fields, or
    none: an empty node (the Prefect form's untouched fields) sizes nothing."""

    gpus: int | None = Field(None, ge=1, title="GPUs", description="GPUs a node has (its allocatable nvidia.com/gpu).")
    gpu_memory: str | None = Field(None, title="GPU memory",
                                   description="Each GPU's memory as nvidia-smi reports it: 81559Mi for an H100 80GB, "
                                               "143771Mi for an H200.")
    memory: str | None = Field(None, description="Host memory a pod can get on the node (its allocatable memory, "
                                                 "`kubectl describe node`), e.g. 2000G.")
    ephemeral_storage: str | None = Field(None, description="Local disk a pod can get on the node (its allocatable "
                                                            "ephemeral-storage), e.g. 3500Gi.")

    @field_validator("gpu_memory", "memory", "ephemeral_storage")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None:
            quantity(value)
        return value

    @model_validator(mode="after")
    def _all_or_none(self) -> "GpuNode":
        missing = [k for k, v in self if v is None]
        if 0 < len(missing) < len(type(self).model_fields):
            raise ValueError(f"gpu_node: {', '.join(missing)} missing: give all of gpus, gpu_memory, memory and "
                             "ephemeral_storage (the node type the pods are sized for), or none (no sizing)")
        return self

    @property
    def empty(self) -> bool:
        return self.gpus is None

    def machine(self) -> Machine:
        return Machine(gpus=self.gpus, gpu_bytes=quantity(self.gpu_memory), host_bytes=quantity(self.memory),
                       disk_free_bytes=quantity(self.ephemeral_storage),
                       name=f"{self.gpus} x {self.gpu_memory} GPU node")


def memory_for(host_peak_bytes: float) -> float:
    """Host memory a pod needs for a plan's host peak: the peak within HEADROOM of the limit (as the plan keeps every
    device), plus /dev/shm and the processes."""
    return host_peak_bytes / HEADROOM + SHM_BYTES + PROCESS_BYTES


def size_for(memory: MemoryPlan, how: Settings, eval_gpus: int, disk_bytes: float, node: GpuNode,
             overlap_base: Literal["auto"] | bool = "auto") -> dict[str, Any]:
    """Job variables for the GPU pod of one variant: `gpu_count`, the larger of quantization's GPUs (as it will run,
    components/overlap.py) and the evaluation's (vLLM's tensor parallelism), or their sum where `overlap_base` is
    true (preflight refuses true without room for both); `memory_request` and an equal `memory_limit` (memory_for the
    plan's host peak, whole Gi); `scratch_size` (the emptyDir and the container's ephemeral storage) from
    memory_plan.disk_needed. ValueError, with the numbers, when a whole node cannot hold it."""
    machine = node.machine()
    quant = overlap.quantization_gpus(memory, how, machine)
    gpus = quant + eval_gpus if overlap_base is True else max(quant, eval_gpus)
    host = math.ceil(memory_for(memory.host_peak_bytes) / GiB) * GiB
    scratch = math.ceil(disk_bytes / GiB) * GiB
    too_big = [f"{what} {need} > the node's {have}" for what, need, have, fits in [
        ("GPUs", gpus, node.gpus, gpus <= node.gpus),
        ("memory", gi(host), node.memory, host <= machine.host_bytes),
        ("scratch", gi(scratch), node.ephemeral_storage, scratch <= machine.disk_free_bytes)] if not fits]
    if too_big:
        raise ValueError(f"the variant's pod does not fit a {machine.name} ({', '.join(too_big)}; quantization takes "
                         f"{quant} GPU(s), the evaluation {eval_gpus}, host peak {memory.host_peak_bytes / GB:,.1f} GB): "
                         "use a bigger node type in gpu_node, or fewer/shorter calibration samples")
    return {"gpu_count": gpus, "memory_request": gi(host), "memory_limit": gi(host), "scratch_size": gi(scratch)}


# --- inside the pod -------------------------------------------------------------------------------------------------

def memory_limit(root: Path | None = None) -> int | None:
    """This container's memory limit in bytes from its cgroup (v2, else v1), None when it has none or none is found."""
    root = root or CGROUP
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= UNLIMITED:
            return None
        return int(text)
    return None


def scratch_limit(env: Mapping[str, str] | None = None) -> int | None:
    """The size of the volume QUANTFLOW_HOME is on, as the job template passes it (QUANTFLOW_SCRATCH_LIMIT), or None."""
    value = (os.environ if env is None else env).get(SCRATCH_ENV)
    return quantity(value) if value else None


def _used(root: Path) -> int:
    """Bytes the files under `root` take on disk (what the kubelet counts against an emptyDir's sizeLimit)."""
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_blocks * 512
            except OSError:
                pass
    return total


def check_memory(memory: MemoryPlan | None, host_bytes: float, root: Path | None = None) -> Checked[None]:
    """The plan's host peak against this container's memory limit, where that is lower than the host's RAM."""
    limit = memory_limit(root)
    if memory is None or limit is None or limit >= host_bytes or memory.host_peak_bytes <= limit * HEADROOM:
        return Checked()
    return Checked(problems=[
        f"quantization: the plan needs {memory.host_peak_bytes / GB:,.1f} GB of host RAM; this pod's memory limit is "
        f"{limit / GiB:,.1f} GiB ({HEADROOM:.0%} of it usable): set the memory_request and memory_limit job variables "
        f"to {gi(memory_for(memory.host_peak_bytes))} or more, {FIX}"])


def check_scratch(where: Path, total: int, env: Mapping[str, str] | None = None) -> Checked[None]:
    """`total` bytes to be written under `where` against the pod's scratch limit, when `where` is on QUANTFLOW_HOME's
    volume (what the volume already holds counts)."""
    limit = scratch_limit(env)
    if limit is None or where.stat().st_dev != existing(settings().home).stat().st_dev:
        return Checked()
    home = settings().home.resolve()
    used = _used(home) if home.is_dir() else 0
    if limit - used >= total:
        return Checked()
    return Checked(problems=[
        f"not enough scratch under {where}: ~{total / GiB:,.2f} GiB needed; this pod's scratch limit is "
        f"{limit / GiB:,.2f} GiB ({SCRATCH_ENV}, the emptyDir's sizeLimit), {used / GiB:,.2f} GiB of it used: set the "
        f"scratch_size job variable to {gi(total + used)} or more, {FIX}"])
