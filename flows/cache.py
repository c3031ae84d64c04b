"""Cache policies: keys from the content of every input plus the code that makes the artifact (never paths, times or
versions of quantflow itself), computed once even when runs ask for the same key at once.

Code = the source of the task function (Prefect's TASK_SOURCE) + the source files of the modules it runs
(`STEP_CODE`) + the installed versions of the libraries that produce the bytes (`STEP_LIBRARIES`); evaluation and
serving run lm-eval and vLLM in another environment, so their keys also hold what is installed there
(`environment.identity`: the RECORDs of its lm-eval, vLLM, torch, transformers).
docs/design.md ("Cache keys") lists what enters each key; keep the two in step.

Each policy is SERIALIZABLE (Prefect's transaction isolation): a task run whose key another run is computing waits
for it, then reads its committed result and shows as Cached.

A hit is used only once its artifact checks out (`checked`, `started`): every cached result type says how its own
artifact differs from what was recorded when it was made (`artifact_problems()`); on any difference the step runs again.
With an artifact store configured, a hit whose artifact is not in this home is first fetched and checked
(components/remote.py).
"""
from __future__ import annotations

import inspect
import threading
from functools import partial
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import anyio
from filelock import FileLock, Timeout
from prefect import get_run_logger
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.locking.protocol import LockManager

from components import remote
from components.artifacts import IntegrityError
from components.digests import code_digest, digest_obj, sha256_file
from components.evaluation import environment
from components.settings import settings

STEP_CODE: dict[str, tuple[str, ...]] = {
    "base": ("components.models", "components.digests", "components.artifacts"),
    "calibration": ("components.calibration", "components.artifacts"),
    "quantize": ("components.quantize", "components.determinism", "components.recipes", "components.artifacts",
                 "components.memory_plan"),
    "evaluate": ("components.evaluation.runner", "components.evaluation.environment", "components.evaluation.command",
                 "components.evaluation.results", "components.evaluation.humaneval", "components.evaluation.sandbox",
                 "components.evaluation.suites"),  # suites: how a suite file is read (its defaults run)
    "serving": ("components.evaluation.serving", "components.evaluation.command", "components.evaluation.environment"),
}
STEP_LIBRARIES: dict[str, tuple[str, ...]] = {
    "base": ("transformers", "gguf", "torch"),
    "calibration": ("transformers", "tokenizers", "datasets"),
    "quantize": ("llmcompressor", "compressed-tensors", "transformers", "torch"),
    "evaluate": ("lm_eval", "transformers", "torch"),
    "serving": (),
}


def _task_source(ctx) -> str:
    fn = getattr(getattr(ctx, "task", ctx), "fn", None)
    return inspect.getsource(fn) if fn is not None else ""


def key(step: str, *parts, ctx=None) -> str:
    """`<step>-<digest>` of the step's code and `parts`; `ctx` (Prefect's task-run context, or the task itself)
    adds the task function's source. The `*_key(ctx, parameters)` functions below are the tasks' `cache_key_fn`s."""
    code = code_digest(STEP_CODE.get(step, ()), STEP_LIBRARIES.get(step, ()))
    return f"{step}-{digest_obj([code, _task_source(ctx), step, *parts])[:32]}"


def base_key(ctx, p: dict) -> str:
    """The base model's content: GGUF file sha256, local directory file digests, or Hub id @ commit sha."""
    from components.models import content_id

    return key("base", content_id(p["spec"].source, p["spec"].revision), ctx=ctx)


def dataset_content(dataset: str) -> str | None:
    """A local calibration file's or folder's content digest; None for a Hub dataset id."""
    from components.digests import digest_dir

    local = Path(dataset)
    return sha256_file(local) if local.is_file() else digest_dir(local) if local.is_dir() else None


def calibration_key(ctx, p: dict) -> str:
    """Calibration spec (a local dataset by content, not path) + the tokenizer's model (base digest)."""
    spec = p["spec"]
    content = dataset_content(str(spec.dataset_path))
    return key("calibration", spec.model_dump(mode="json", exclude={"dataset"} if content else set()), content,
               p["base"].digest, ctx=ctx)


def quantize_key(ctx, p: dict) -> str:
    """Base digest + recipe digest + calibration set digest (None for data-free schemes) + how llm-compressor ran
    (placement, activation offload, pipeline, batch size: a batch pads or truncates, a device rounds differently)."""
    return key("quantize", p["base"].digest, p["scheme"].digest, p["calib"].digest if p["calib"] else None,
               p["how"].model_dump(mode="json"), ctx=ctx)


def evaluate_key(ctx, p: dict) -> str:
    """Model digest + suite digest + engine settings + the identity of the environment that runs lm-eval (its
    lm-eval, vLLM, torch, transformers: `.venv-eval` for vLLM, this one for hf)."""
    engine = p["engine"]
    return key("evaluate", p["model_digest"], p["suite_digest"], engine.model_dump(mode="json"),
               environment.identity(engine.engine, environment.EVALUATE_DISTRIBUTIONS), ctx=ctx)


def serving_key(ctx, p: dict) -> str:
    """Model digest + engine settings + serving settings + the prompt file's content (not its path) + the identity
    of the evaluation environment that serves and benchmarks (its vLLM, torch, transformers)."""
    spec = p["spec"]
    return key("serving", p["model_digest"], p["engine"].model_dump(mode="json"),
               spec.model_dump(mode="json", exclude={"prompts"}), sha256_file(spec.prompts_path),
               environment.identity("vllm", environment.SERVING_DISTRIBUTIONS), ctx=ctx)


class HomeLockManager(LockManager):
    """Prefect's transaction locks as OS file locks (filelock) under QUANTFLOW_HOME/locks/prefect: threads, processes
    and machines sharing the home wait for one another. Resolved per call (the home is set per run). Unlike Prefect's
    FileSystemLockManager, whose lock files outlive a killed holder and block every later run, the OS drops a dead
    holder's lock, so `hold_timeout` is not needed and is ignored."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, FileLock]] = {}
        self._guard = threading.Lock()

    def __deepcopy__(self, memo):  # one manager per process: Prefect copies policies when configuring them
        return self

    def __reduce__(self):
        return HomeLockManager, ()

    @staticmethod
    def _lock(key: str) -> FileLock:
        folder = settings().path("locks") / "prefect"
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(folder / f"{key.replace('/', '_')}.lock", thread_local=False)

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        if self.is_lock_holder(key, holder):
            return True
        lock = self._lock(key)
        try:
            lock.acquire(timeout=-1 if acquire_timeout is None else acquire_timeout)
        except Timeout:
            return False
        with self._guard:
            self._held[key] = (holder, lock)
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(partial(self.acquire_lock, key, holder, acquire_timeout, hold_timeout))

    def release_lock(self, key: str, holder: str) -> None:
        with self._guard:
            if not self.is_lock_holder(key, holder):
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")
            _, lock = self._held.pop(key)
        lock.release()

    def is_locked(self, key: str) -> bool:
        if key in self._held:
            return True
        probe = self._lock(key)
        try:
            probe.acquire(timeout=0)
        except Timeout:
            return True
        probe.release()
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        held = self._held.get(key)
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        probe = self._lock(key)
        try:
            probe.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            return False
        probe.release()
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(partial(self.wait_for_lock, key, timeout))


LOCKS = HomeLockManager()


def policy(key_fn) -> CacheKeyFnPolicy:
    """The task's cache policy: `key_fn` as its key, computed once under the home's lock."""
    return CacheKeyFnPolicy(cache_key_fn=key_fn).configure(isolation_level="SERIALIZABLE", lock_manager=LOCKS)


class Checked(Protocol):
    """A cached task's result: it knows the artifact it describes and how that differs from its record."""

    def artifact_problems(self) -> list[str]: ...


C = TypeVar("C", bound=Checked)


def checked(step, *args, run_name: str | None = None) -> Checked:
    """Run `step` (served from Prefect's cache when its key matches), then check the artifact its result describes
    against what was recorded when it was made; on any difference say so and make the step recompute
    (`refresh_cache`). `run_name` is what the Prefect UI calls the task run ("evaluate base")."""
    step = step.with_options(task_run_name=run_name) if run_name else step
    return _verified(step, step(*args), args)


def started(step, *args, run_name: str | None = None) -> Callable[[], Checked]:
    """`checked`, begun now on the flow's task runner (Prefect's `submit`) to run beside what follows: call the
    returned function to wait for its result, checked the same way."""
    step = step.with_options(task_run_name=run_name) if run_name else step
    future = step.submit(*args)
    return lambda: _verified(step, future.result(), args)


def _verified(step, result: C, args: tuple) -> C:
    """`result`, once its artifact matches its record; else `step` recomputed (`refresh_cache`), checked again.

    With an artifact store (components/remote.py) the result names its folder under this home, and a folder missing
    or damaged here is first fetched from the store, checked against the record on the way in."""
    if settings().artifact_store:
        result = remote.localized(result)
        if result.artifact_problems():
            remote.fetch(result, get_run_logger())
    if problems := result.artifact_problems():
        get_run_logger().warning("%s: the cached result's artifact is not what was made (%s): recomputing it",
                                 step.name, "; ".join(problems[:3]))
        result = step.with_options(refresh_cache=True)(*args)
        if problems := result.artifact_problems():
            raise IntegrityError(f"{step.name}: recomputed, and its artifact still differs from its record "
                                 f"({'; '.join(problems[:3])})")
    return result
