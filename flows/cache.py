"""Cache keys: the content of every input plus the code that makes the artifact, never paths, times or versions
of quantflow itself.

Code = the source of the task function (Prefect's TASK_SOURCE) + the source files of the modules it runs
(`STEP_CODE`) + the installed versions of the libraries that produce the bytes (`STEP_LIBRARIES`).
docs/design.md ("Cache keys") lists what enters each key; keep the two in step.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from components.digests import code_digest, digest_obj, sha256_file

STEP_CODE: dict[str, tuple[str, ...]] = {
    "base": ("components.models", "components.digests", "components.artifacts"),
    "calibration": ("components.calibration", "components.artifacts"),
    "quantize": ("components.quantize", "components.determinism", "components.recipes", "components.artifacts",
                 "components.memory_plan"),
    "evaluate": ("components.evaluation.runner", "components.evaluation.environment", "components.evaluation.command",
                 "components.evaluation.results", "components.evaluation.humaneval", "components.evaluation.sandbox"),
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
    return key("calibration", spec.model_dump(exclude={"dataset"} if content else set()), content, p["base"].digest, ctx=ctx)


def quantize_key(ctx, p: dict) -> str:
    """Base digest + recipe digest + calibration set digest (None for data-free schemes) + how llm-compressor ran
    (placement, activation offload, pipeline, batch size: a batch pads or truncates, a device rounds differently)."""
    return key("quantize", p["base"].digest, p["scheme"].digest, p["calib"].digest if p["calib"] else None,
               p["how"].model_dump(), ctx=ctx)


def evaluate_key(ctx, p: dict) -> str:
    """Model digest + suite digest + engine settings."""
    return key("evaluate", p["model_digest"], p["suite_digest"], p["engine"].model_dump(), ctx=ctx)


def serving_key(ctx, p: dict) -> str:
    """Model digest + engine settings + serving settings + the prompt file's content (not its path)."""
    spec = p["spec"]
    return key("serving", p["model_digest"], p["engine"].model_dump(), spec.model_dump(exclude={"prompts"}),
               sha256_file(spec.prompts_path), ctx=ctx)
