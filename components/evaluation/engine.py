"""Which engine evaluates a scheme on this platform, with what settings."""
from __future__ import annotations

from components.evaluation import environment
from components.evaluation.command import EngineSettings
from components.evaluation.suites import Suite
from components.memory_plan import gpu_possible
from components.messages import Checked
from components.recipes import SchemeDef
from components.specs import EvalSpec


def detect_platform() -> str:
    """cuda when torch can use a GPU here, else cpu. Where no GPU is possible (gpu_possible) torch, seconds to import,
    is not asked: a preflight refusal on a CPU machine imports none of it."""
    if not gpu_possible():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_engine(requested: str, scheme: SchemeDef, platform: str) -> str:
    """vLLM where this platform's vLLM runs the scheme, else hf; `vllm` asked for where it cannot run is an error."""
    runs = platform in scheme.vllm_platforms
    if requested == "hf":
        return "hf"
    if requested == "vllm" and not runs:
        raise ValueError(f"vLLM on {platform} cannot run scheme {scheme.name} "
                         f"(it runs on: {', '.join(scheme.vllm_platforms)}); use engine 'hf' or 'auto'")
    return "vllm" if runs else "hf"


def batch_size(requested: str, engine: str, platform: str) -> str:
    """hf's `auto` probes GPU memory; on CPU it grows batches until the OS kills it (seen here: 23 GB on a tiny model)."""
    if requested == "auto" and engine == "hf" and platform == "cpu":
        return "4"
    return requested


def planned(ev: EvalSpec, scheme: SchemeDef | None, platform: str | None = None) -> str | None:
    """The engine that will evaluate `scheme` here (`platform`: detect_platform()'s answer when already known), or None
    where check will say why none can."""
    try:
        return choose_engine(ev.engine.value, scheme, platform or detect_platform()) if scheme is not None else None
    except ValueError:
        return None


def check(ev: EvalSpec, scheme: SchemeDef | None, suite: Suite | None, base_name: str | None,
          max_positions: int | None, platform: str | None = None, gpus: int | None = None) -> Checked[EngineSettings]:
    """The engine settings the spec asks for on this machine (the value), and why they cannot run here (one line each,
    with the fix): no GPU where one is required or too few for the tensor parallelism, a scheme vLLM cannot run, vLLM's
    environment missing, a suite longer than the base model's positions. `platform`, `gpus`: detect_platform() and
    torch.cuda.device_count() when already known (preflight's memo), else asked here."""
    problems = []
    platform = platform or detect_platform()
    if ev.require_gpu and platform != "cuda":
        problems.append("evaluation.require_gpu is set but no CUDA GPU is visible here (torch.cuda.is_available() is "
                        "False): run on a GPU work pool, or unset require_gpu to run on CPU")
    if platform == "cuda":
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        if ev.tensor_parallel_size > gpus:
            problems.append(f"evaluation.tensor_parallel_size {ev.tensor_parallel_size} is more than the "
                            f"{gpus} GPU(s) visible here")
    if scheme is None:
        return Checked(problems=problems)
    try:
        engine = choose_engine(ev.engine.value, scheme, platform)
    except ValueError as e:
        return Checked(problems=[*problems, f"evaluation.engine: {e}"])
    if engine == "vllm":
        problems += [f"evaluation.engine: vLLM evaluates this scheme here: {missing}, or use evaluation.engine: hf"
                     for missing in environment.check().problems]
        if suite is not None and max_positions:
            longest = max([t.max_model_len or suite.max_model_len for t in suite.tasks])
            if longest > max_positions:
                problems.append(f"evaluation.suite {suite.name!r}: vLLM would run with max_model_len {longest}, above "
                                f"{base_name}'s max_position_embeddings {max_positions} (vLLM refuses it): use engine "
                                f"hf or a suite with max_model_len <= {max_positions}")
    return Checked(EngineSettings(engine=engine, platform=platform, tensor_parallel_size=ev.tensor_parallel_size,
                                  batch_size=batch_size(ev.batch_size, engine, platform), limit=ev.limit, seed=ev.seed,
                                  gpu_memory_utilization=ev.gpu_memory_utilization if engine == "vllm" else None),
                   problems)
