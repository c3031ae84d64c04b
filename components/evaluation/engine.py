"""Which engine evaluates a scheme on this platform (pure)."""
from __future__ import annotations

from components.recipes import SchemeDef


def detect_platform() -> str:
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
