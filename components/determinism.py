"""Same inputs, same outputs: seeds, deterministic kernels and a fixed thread count, for quantization (in this
process) and for the evaluation engine (the environment of its subprocess).

Float sums depend on their order, and on CPU the order depends on how many threads split the work (and, in vLLM,
on which requests share a batch). So the thread count is fixed per machine (every core this process may use, or
QUANTFLOW_NUM_THREADS): the same machine gives the same checkpoint digest and scores; to get them on another
machine, set QUANTFLOW_NUM_THREADS to the same value on both. Measured spread: docs/benchmarks.md, "Determinism".
"""
from __future__ import annotations

import os
import random

SEED = 0
THREADS_ENV = "QUANTFLOW_NUM_THREADS"


def num_threads() -> int:
    value = os.environ.get(THREADS_ENV, "").strip()
    return int(value) if value else len(os.sched_getaffinity(0))


def thread_env() -> dict[str, str]:
    """OpenMP/MKL/OpenBLAS thread counts for a subprocess (read when its libraries load, so set before it starts)."""
    n = str(num_threads())
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


def make_deterministic(seed: int = SEED) -> None:
    """Seed every RNG that calibration touches (llm-compressor shuffles the calibration samples with torch's global
    generator), ask torch for deterministic kernels (warning, not failing, where an op has none) and fix its threads."""
    import numpy as np
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read at its first use
    os.environ.setdefault("MKL_CBWR", "AUTO")  # MKL's run-to-run reproducible code paths; read at its first call
    os.environ.setdefault("MKL_DYNAMIC", "FALSE")  # MKL uses the threads it is given, never fewer
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(num_threads())


def engine_env(platform: str) -> dict[str, str]:
    """What the evaluation engine's process (lm_eval with vLLM or hf) needs to give the same scores run after run.

    Threads and MKL as above; PYTHONHASHSEED fixed, so sets of strings iterate (and requests are ordered) alike; on
    CPU, vLLM's engine core in lm_eval's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0): with a separate engine
    process the scheduler starts on the requests that have arrived so far, so which requests share a batch (and so
    the order of float sums in the attention kernels) depends on timing."""
    env = {**thread_env(), "PYTHONHASHSEED": "0", "MKL_CBWR": "AUTO", "MKL_DYNAMIC": "FALSE"}
    if platform == "cpu":
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env
