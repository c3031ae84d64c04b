"""Whether an evaluation fits vLLM on this machine's GPUs, and the tensor parallelism that makes it fit (pure).

vLLM starts only when, on each GPU, its share of the weights (weights / TP), its share of the KV cache for the
sequences of `max_model_len` it must hold at once (one for lm-eval's `auto` batch), and its own overhead (CUDA context,
the activation peak it profiles, CUDA graphs) fit within `gpu_memory_utilization` x the GPU's memory. A 70B bf16 base
(141 GB) does not fit one H200 at vLLM's default 0.9 (~136 GB): found at preflight, not after hours of quantization.
Figures are arithmetic.
"""
from __future__ import annotations

from pydantic import BaseModel

from components.memory_plan import ModelShape
from components.messages import Checked

GB = 1e9
VLLM_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization
OVERHEAD_BYTES = 2 * 2**30  # per GPU: CUDA context, profiled activation peak, CUDA graphs (arithmetic, not measured;
# with it a 72.7 GB INT8 70B fits one 80 GB card at 4096 tokens, as seed 002 evaluated it at tensor_parallel_size 1)


class Evaluated(BaseModel):
    """One model vLLM will load: what it weighs and what a token of its KV cache costs."""

    what: str  # "base" or "variant"
    weights_bytes: float
    kv_bytes_per_token: float


def kv_bytes_per_token(shape: ModelShape, kv_dtype_bytes: int = 2) -> float:
    """K and V of every layer for one token (vLLM's default KV dtype is the model's, bf16)."""
    return 2 * shape.layers * shape.kv_dim * kv_dtype_bytes


def per_gpu_bytes(model: Evaluated, tp: int, max_model_len: int, sequences: int = 1) -> float:
    return model.weights_bytes / tp + model.kv_bytes_per_token * max_model_len * sequences / tp + OVERHEAD_BYTES


def sequences(batch_size: str) -> int:
    """Sequences of `max_model_len` the KV cache must hold at once: a numeric batch size, else one (vLLM's own
    scheduler adapts `auto` batches to the cache it has; it refuses to start without room for one)."""
    return int(batch_size) if batch_size.isdigit() else 1


def _fits(models: list[Evaluated], tp: int, max_model_len: int, batch_size: str, budget: float) -> bool:
    return all(per_gpu_bytes(m, tp, max_model_len, sequences(batch_size)) <= budget for m in models)


def smallest_tp(models: list[Evaluated], max_model_len: int, batch_size: str, gpus: int, gpu_bytes: float,
                utilization: float | None) -> int | None:
    """The smallest power of two, at most `gpus`, at which every model fits; None when none does."""
    budget = (utilization or VLLM_UTILIZATION) * gpu_bytes
    tp = 1
    while tp <= gpus:
        if _fits(models, tp, max_model_len, batch_size, budget):
            return tp
        tp *= 2
    return None


def problems(models: list[Evaluated], tp: int, max_model_len: int, batch_size: str, gpus: int, gpu_bytes: float,
             utilization: float | None) -> list[str]:
    """One line per model that does not fit at this TP, with the numbers and the fix."""
    util = utilization or VLLM_UTILIZATION
    budget = util * gpu_bytes
    out = []
    for m in models:
        n = sequences(batch_size)
        need = per_gpu_bytes(m, tp, max_model_len, n)
        if need <= budget:
            continue
        fitting = smallest_tp([m], max_model_len, batch_size, 1 << 10, gpu_bytes, utilization)
        fix = f"tensor_parallel_size {fitting} (or auto) on {fitting} such GPUs" if fitting else "bigger GPUs"
        if m.what == "base":
            fix += ", or evaluation.reference_baseline (the base's published scores)"
        out.append(f"evaluation: the {m.what} model does not fit vLLM at tensor_parallel_size {tp}: "
                   f"{m.weights_bytes / GB:,.1f} GB of weights / {tp} + KV cache for {n} x {max_model_len} tokens "
                   f"{m.kv_bytes_per_token * max_model_len * n / tp / GB:,.1f} GB + overhead {OVERHEAD_BYTES / GB:,.1f} GB "
                   f"= {need / GB:,.1f} GB a GPU, more than {util:.2f} x {gpu_bytes / GB:,.1f} GB = {budget / GB:,.1f} GB "
                   f"({gpus} GPU(s) here): use {fix}")
    return out


def data_parallel(tp: int, gpus: int) -> int:
    """Engine replicas the visible GPUs hold at this TP (lm-eval's vLLM `data_parallel_size`)."""
    return max(1, gpus // tp)


def resolve(ev, models: list[Evaluated], max_model_len: int, gpus: int,
            gpu_bytes: float) -> tuple[int, list[str], list[str]]:
    """evaluation.tensor_parallel_size on this machine's GPUs (`auto`: the smallest power of two at which every model
    that will be evaluated fits, within the visible GPUs): the TP, the problems (one line each, numbers and fix), and
    a note on the GPUs left over. Those would be lm-eval's vLLM `data_parallel_size` replicas, but lm-eval 0.4.13
    dispatches them through Ray, which the evaluation environment does not install: not offered until it does."""
    if ev.tensor_parallel_size == "auto":
        tp = smallest_tp(models, max_model_len, ev.batch_size, gpus, gpu_bytes, ev.gpu_memory_utilization)
        if tp is None:  # nothing fits the visible GPUs: say so at the largest power of two they allow
            tp = 1 << (max(gpus, 1).bit_length() - 1)
            return tp, problems(models, tp, max_model_len, ev.batch_size, gpus, gpu_bytes, ev.gpu_memory_utilization), []
    else:
        tp = ev.tensor_parallel_size
    found = problems(models, tp, max_model_len, ev.batch_size, gpus, gpu_bytes, ev.gpu_memory_utilization)
    notes = []
    replicas = data_parallel(tp, gpus)
    if not found and replicas > 1:
        notes.append(f"evaluation: tensor_parallel_size {tp} leaves room for {replicas} vLLM replicas on the {gpus} GPUs, "
                     "but lm-eval's data_parallel_size needs Ray, which the evaluation environment lacks: one replica "
                     "runs (evaluation.overlap_base puts the base evaluation on others while quantizing)")
    return tp, found, notes


def concrete(ev):
    """The spec's evaluation section with `auto` as 1, where nothing is known to size it by (CPU, hf, no config)."""
    return ev.model_copy(update={"tensor_parallel_size": 1}) if ev.tensor_parallel_size == "auto" else ev


def check(ev, config: dict | None, scheme, suite, machine, platform: str | None, engine: str | None) -> Checked:
    """Preflight's evaluation fit: the evaluation section with its TP resolved (the value), problems, notes. Sized only
    where vLLM runs on GPUs and the base's config.json and this machine's GPUs are known; base and variant both, or the
    variant alone when published baseline scores stand in for the base."""
    from components import memory_plan as mp
    from components.evaluation.engine import detect_platform

    platform = platform or detect_platform()
    if engine != "vllm" or platform != "cuda" or config is None or machine is None or scheme is None or suite is None:
        return Checked(concrete(ev))
    try:
        shape = mp.shape_from_config(config)
    except (KeyError, TypeError, ValueError) as e:  # not a Llama-style config: vLLM finds out for itself
        return Checked(concrete(ev), notes=[f"evaluation: no GPU fit check (the base's config has no {e})"])
    size = mp.sizes(shape, mp.Calibration(num_samples=0, seq_len=0), mp.quantization_of(scheme))
    kv = kv_bytes_per_token(shape)
    models = [Evaluated(what="variant", weights_bytes=size["checkpoint"], kv_bytes_per_token=kv)]
    if not ev.reference_baseline:
        models.insert(0, Evaluated(what="base", weights_bytes=size["weights"], kv_bytes_per_token=kv))
    longest = max(t.max_model_len or suite.max_model_len for t in suite.tasks)
    tp, problems_, notes = resolve(ev, models, longest, machine.gpus, machine.gpu_bytes)
    if ev.tensor_parallel_size == "auto" and not problems_:
        notes.insert(0, f"evaluation.tensor_parallel_size auto: {tp} ({' and '.join(m.what for m in models)} fit "
                        f"{tp} GPU(s) of {machine.gpu_bytes / GB:,.1f} GB)")
    return Checked(ev.model_copy(update={"tensor_parallel_size": tp}), problems_, notes)
