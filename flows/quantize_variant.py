"""One variant, end to end: the seed cards' Creation and Evaluation sections as a Prefect flow."""
from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from components import artifacts, calibration, recovery, remote, report, tracking
from components.gate import gate as judge
from components.calibration import CalibSet
from components.card.render import render
from components.artifacts import IntegrityError
from components.digests import digest_stamps, stamp_dir
from components.evaluation import serving, suites
from components.evaluation.command import EngineSettings
from components.evaluation.runner import EvalResult, run_suite
from components.evaluation.serving import ServingResult, Speed
from components.memory_plan import Settings
from components.models import ModelRef, resolve
from components.outcomes import CARD, Checkpoint, VariantOutcome, VariantRecord
from components.preflight import preflight
from components.quantize import quantize
from components.recipes import SchemeDef
from components.settings import settings
from components.specs import BaseModelSpec, CalibrationSpec, ServingSpec, VariantSpec
from components.stores import Published, open_store
from flows.cache import base_key, calibration_key, checked, evaluate_key, policy, quantize_key, serving_key, started


# --- Creation ---------------------------------------------------------------------------------

@task(cache_policy=policy(base_key), persist_result=True)
def resolve_base(spec: BaseModelSpec) -> ModelRef:
    """Materialise the base model locally (GGUF converted once to bf16 safetensors)."""
    return resolve(spec.source, spec.revision)


@task(cache_policy=policy(calibration_key), persist_result=True)
def build_calibration(spec: CalibrationSpec, base: ModelRef) -> CalibSet:
    """Fetch, template, shuffle, select and tokenize the calibration samples."""
    from transformers import AutoTokenizer

    ds, description = calibration.build(spec, AutoTokenizer.from_pretrained(base.path))
    calib = calibration.save(ds, description, spec, settings().path("calibration"))
    remote.upload(calib, get_run_logger())
    return calib


def _artifact_dir(root: str, key_fn) -> Path:
    """This task run's artifact folder, named by its cache key (content and code, never paths)."""
    ctx = TaskRunContext.get()
    return settings().path(root) / key_fn(ctx, ctx.parameters)


@task(cache_policy=policy(quantize_key), persist_result=True)
def quantize_checkpoint(base: ModelRef, scheme: SchemeDef, calib: CalibSet | None, name: str, how: Settings,
                        gpus: list[int] | None = None) -> Checkpoint:
    """llm-compressor oneshot with the scheme's recipe; the compressed checkpoint keeps recipe.yaml. `gpus` (not in
    the key: the checkpoint does not depend on which GPUs made it): the ones it keeps to beside the base evaluation.

    Under the checkpoint's lock: a run that waited for another making the same checkpoint takes it (checked whole).
    """
    out = _artifact_dir("checkpoints", quantize_key)
    out = out.with_name(f"{name}-{out.name.split('-', 1)[1][:12]}")
    with artifacts.locked(out):
        if (done := artifacts.reuse(out, Checkpoint, full=True)) is not None:
            get_run_logger().info("%s was made by another run meanwhile: taken, checked whole", out)
            return done
        tmp = artifacts.workdir(out)
        try:
            quantize(base.path, scheme, calib.path if calib else None, tmp,
                     calib.num_samples if calib else 0, calib.max_seq_length if calib else 0, how, gpus)
            files = stamp_dir(tmp, exclude=(CARD,))
            checkpoint = Checkpoint(name=name, path=str(out), digest=digest_stamps(files), files=files)
            artifacts.install(tmp, out, checkpoint, exclude=(CARD,), files=files)
        finally:
            artifacts.remove(tmp)
    remote.upload(checkpoint, get_run_logger())
    return checkpoint


# --- Evaluation -------------------------------------------------------------------------------

@task(cache_policy=policy(evaluate_key), persist_result=True, retries=1)
def evaluate(model_path: str, model_digest: str, suite_file: str, suite_digest: str, engine: EngineSettings,
             gpus: list[int] | None = None) -> EvalResult:
    """lm_eval in its own process; the baseline's key has no variant in it, so every variant shares it. The suite
    travels as its file, checked against `suite_digest` (its key), never looked up by name. `gpus` (not in the key:
    scores do not depend on which GPU): the only ones its process sees, beside quantization."""
    out = _artifact_dir("evals", evaluate_key)
    with artifacts.locked(out):
        if (done := artifacts.reuse(out, EvalResult)) is not None:
            return done
        tmp = artifacts.workdir(out)
        try:
            suite = suites.load_file(suite_file, suite_digest)
            result = run_suite(model_path, suite, engine, tmp, log=get_run_logger().info, gpus=gpus)
            result = result.model_copy(update={"output_dir": str(out)})
            artifacts.install(tmp, out, result)
        finally:
            artifacts.remove(tmp)
    remote.upload(result, get_run_logger())
    return result


@task(cache_policy=policy(serving_key), persist_result=True, retries=1)
def measure_serving(model_path: str, model_digest: str, engine: EngineSettings, spec: ServingSpec) -> ServingResult:
    """`vllm serve` + `vllm bench serve` in their own processes; the baseline's result is shared like its evaluation.

    Measured in place (the bench command, printed in the card, names its result folder), under the folder's lock.
    """
    out = _artifact_dir("serving", serving_key)
    with artifacts.locked(out):
        if (done := artifacts.reuse(out, ServingResult)) is not None:
            return done
        artifacts.stamp_path(out).unlink(missing_ok=True)
        if out.exists():
            artifacts.remove(out)
        result = serving.measure(model_path, engine, spec, out, log=get_run_logger().info)
        artifacts.stamp(out, result)
    remote.upload(result, get_run_logger())
    return result


# --- Card, publication, lineage ---------------------------------------------------------------

@task(task_run_name="write card")
def write_card(record: VariantRecord) -> str:
    """Written beside the checkpoint, then renamed in: a concurrent publication never reads half a card."""
    tmp = artifacts.partial(Path(record.checkpoint.path + ".card"))  # outside the checkpoint: never listed in a manifest
    tmp.write_text(render(record))
    os.replace(tmp, record.card)
    return str(record.card)


@task(task_run_name="publish", retries=2, retry_delay_seconds=5)
def publish(record: VariantRecord) -> list[Published]:
    """Checkpoint and card together, once the checkpoint is checked in full against its record; the manifest lists
    the recorded sha256, each store writes it last and checks what it wrote. One publication of a name at a time.
    Published under the variant's name: the checkpoint may come from the cache of a variant with another name."""
    checkpoint = record.checkpoint
    if problems := checkpoint.artifact_problems():
        raise IntegrityError(f"not publishing {checkpoint.path}: it changed since it was made ({'; '.join(problems[:3])}); "
                             "rerun: it is recomputed")
    meta = {"recipe": record.scheme.recipe, "recipe_digest": record.scheme.digest, "checkpoint_digest": checkpoint.digest,
            "spec": record.spec.model_dump(mode="json")}
    known = {f.path: f for f in checkpoint.files}
    with artifacts.locked(settings().path("locks") / f"publish-{record.name}"):
        return [open_store(s).put(Path(checkpoint.path), record.name, meta, known) for s in record.spec.stores]


@task(task_run_name="record in MLflow")
def track(record: VariantRecord) -> str:
    """Under a lock per variant name: a concurrent identical run waits, then finds the first one's run by its record."""
    with artifacts.locked(settings().path("locks") / f"mlflow-{record.name}"):
        return tracking.log_variant(record)


@flow(name="quantize-variant", log_prints=True)
def quantize_variant(spec: VariantSpec = VariantSpec()) -> VariantOutcome:
    """Quantize one variant of a base model, evaluate it beside its base, publish it with its card."""
    logger = get_run_logger()
    # Preflight: everything that can be wrong with the spec, the model, the data, the stores and the tracking server
    # fails here, all problems in one error, before any heavy work (components/preflight.py).
    plan = preflight(spec)
    scheme, suite, engine, suite_key = plan.scheme, plan.suite, plan.engine, plan.suite_digest
    for note in plan.notes:  # what preflight found worth saying (the memory plan, what is checked later): not a warning
        logger.info(note)

    # Creation; the base evaluation starts beside it where the machine has room for both, or before it on GPUs
    # (plan.overlap)
    base = checked(resolve_base, spec.base, run_name="resolve base model")
    name = spec.variant_name or f"{base.name}-{scheme.suffix}"
    calib = checked(build_calibration, spec.calibration, base, run_name="build calibration set") \
        if scheme.needs_calibration else None
    base_eval_args = (base.path, base.digest, str(suite._file), suite_key, engine, plan.overlap.eval_gpus)
    base_eval_later = started(evaluate, *base_eval_args, run_name="evaluate base") if plan.overlap.overlap else None
    base_eval_first = checked(evaluate, *base_eval_args, run_name="evaluate base") if plan.overlap.base_first else None
    checkpoint = checked(quantize_checkpoint, base, scheme, calib, name, plan.quantization, plan.overlap.quantize_gpus,
                         run_name=f"quantize {scheme.name}")

    # Evaluation: same engine and settings for base and variant (or published baseline scores, marked as such)
    base_eval = plan.reference or base_eval_first or (base_eval_later() if base_eval_later
                                                      else checked(evaluate, *base_eval_args, run_name="evaluate base"))
    variant_eval = checked(evaluate, checkpoint.path, checkpoint.digest, str(suite._file), suite_key, engine,
                           run_name="evaluate variant")
    table = recovery.table(base_eval.scores, variant_eval.scores)
    gate = judge(table, rtol=spec.evaluation.rtol, min_average_recovery=spec.evaluation.min_average_recovery)

    # Speed and size beside accuracy: the same engine, settings and prompts for base and variant
    speed = None
    if plan.serving:
        base_speed = checked(measure_serving, base.path, base.digest, engine, spec.evaluation.serving,
                             run_name="serve base")
        variant_speed = checked(measure_serving, checkpoint.path, checkpoint.digest, engine, spec.evaluation.serving,
                                run_name="serve variant")
        speed = Speed(base=base_speed, variant=variant_speed)

    # One record of the run, every fact once: the card, the publication and MLflow read it, the outcome comes from it
    record = VariantRecord(name=name, spec=spec, scheme=scheme, base=base, calibration=calib, quantization=plan.quantization,
                           checkpoint=checkpoint, suite=suite, suite_file=suite._file, base_eval=base_eval,
                           variant_eval=variant_eval, table=table, gate=gate, speed=speed, versions=tracking.versions(),
                           flow_run_id=str(flow_run.get_id()), flow_run_url=str(flow_run.get_flow_run_ui_url() or ""))
    write_card(record)
    record.published = publish(record)
    mlflow_run = track(record)
    report.variant(record, mlflow_run)
    return record.outcome(mlflow_run)
