"""One variant, end to end: the seed cards' Creation and Evaluation sections as a Prefect flow."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel

from components import calibration, recovery, tracking
from components.gate import GateVerdict, gate
from components.calibration import CalibSet
from components.card.render import CardFacts, accuracy_table, gate_markdown, render, serving_table
from components.digests import digest_dir, sha256_file
from components.evaluation import serving, suites
from components.evaluation.command import EngineSettings
from components.evaluation.runner import EvalResult, run_suite
from components.evaluation.serving import ServingResult, Speed
from components.models import ModelRef, resolve
from components.preflight import preflight
from components.quantize import quantize
from components.recipes import SchemeDef
from components.settings import settings
from components.specs import BaseModelSpec, CalibrationSpec, ServingSpec, VariantSpec
from components.stores import Published, open_store
from flows.cache import key

CARD = "README.md"


class Checkpoint(BaseModel):
    name: str
    path: str
    digest: str  # content without the card


class VariantOutcome(BaseModel):
    name: str
    checkpoint: str
    card: str
    engine: str
    table: recovery.RecoveryTable
    gate: GateVerdict
    speed: Speed | None  # serving benchmark of base and variant, where vLLM runs the scheme
    published: list[Published]
    mlflow_run_id: str
    flow_run_id: str


# --- Creation ---------------------------------------------------------------------------------

@task(cache_key_fn=lambda ctx, p: key("base", p["spec"].model_dump()), persist_result=True)
def resolve_base(spec: BaseModelSpec) -> ModelRef:
    """Materialise the base model locally (GGUF converted once to bf16 safetensors)."""
    return resolve(spec.source, spec.revision)


def _calibration_key(ctx, p) -> str:
    spec: CalibrationSpec = p["spec"]
    local = Path(spec.dataset)
    content = sha256_file(local) if local.is_file() else digest_dir(local) if local.is_dir() else None
    return key("calibration", spec.model_dump(exclude={"dataset"} if content else set()), content, p["base"].digest)


@task(cache_key_fn=_calibration_key, persist_result=True)
def build_calibration(spec: CalibrationSpec, base: ModelRef) -> CalibSet:
    """Fetch, template, shuffle, select and tokenize the calibration samples."""
    from transformers import AutoTokenizer

    ds, description = calibration.build(spec, AutoTokenizer.from_pretrained(base.path))
    return calibration.save(ds, description, spec, settings().path("calibration"))


@task(cache_key_fn=lambda ctx, p: key("quantize", p["base"].digest, p["scheme"].digest,
                                      p["calib"].digest if p["calib"] else None), persist_result=True)
def quantize_checkpoint(base: ModelRef, scheme: SchemeDef, calib: CalibSet | None, name: str) -> Checkpoint:
    """llm-compressor oneshot with the scheme's recipe; the compressed checkpoint keeps recipe.yaml."""
    out = settings().path("checkpoints") / f"{name}-{scheme.digest[:8]}-{(calib.digest if calib else 'nodata')[:8]}"
    quantize(base.path, scheme, calib.path if calib else None, out,
             calib.num_samples if calib else 0, calib.max_seq_length if calib else 0)
    return Checkpoint(name=name, path=str(out), digest=digest_dir(out, exclude=(CARD,)))


# --- Evaluation -------------------------------------------------------------------------------

@task(cache_key_fn=lambda ctx, p: key("evaluate", p["model_digest"], p["suite_digest"], p["engine"].model_dump()),
      persist_result=True, retries=1)
def evaluate(model_path: str, model_digest: str, suite_name: str, suite_digest: str, engine: EngineSettings) -> EvalResult:
    """lm_eval in its own process; the baseline's key has no variant in it, so every variant shares it."""
    logger = get_run_logger()
    out = settings().path("evals") / key("evaluate", model_digest, suite_digest, engine.model_dump())
    return run_suite(model_path, suites.load(suite_name), engine, out, log=logger.info)


def _serving_key(model_digest: str, engine: EngineSettings, spec: ServingSpec) -> str:
    """Content, not paths: the prompt file enters by its digest."""
    return key("serving", model_digest, engine.model_dump(), spec.model_dump(exclude={"prompts"}), sha256_file(spec.prompts))


@task(cache_key_fn=lambda ctx, p: _serving_key(p["model_digest"], p["engine"], p["spec"]), persist_result=True, retries=1)
def measure_serving(model_path: str, model_digest: str, engine: EngineSettings, spec: ServingSpec) -> ServingResult:
    """`vllm serve` + `vllm bench serve` in their own processes; the baseline's result is shared like its evaluation."""
    out = settings().path("serving") / _serving_key(model_digest, engine, spec)
    return serving.measure(model_path, engine, spec, out, log=get_run_logger().info)


# --- Card, publication, lineage ---------------------------------------------------------------

@task
def write_card(facts: CardFacts, checkpoint: Checkpoint) -> str:
    path = Path(checkpoint.path) / CARD
    path.write_text(render(facts))
    return str(path)


@task(retries=2, retry_delay_seconds=5)
def publish(checkpoint: Checkpoint, spec: VariantSpec, scheme: SchemeDef) -> list[Published]:
    """Checkpoint and card together; each store writes its manifest last."""
    meta = {"recipe": scheme.recipe, "recipe_digest": scheme.digest, "checkpoint_digest": checkpoint.digest,
            "spec": spec.model_dump(mode="json")}
    return [open_store(s).put(Path(checkpoint.path), checkpoint.name, meta) for s in spec.stores]


@task
def track(**kwargs) -> str:
    return tracking.log_variant(**kwargs)


@flow(name="quantize-variant", log_prints=True)
def quantize_variant(spec: VariantSpec = VariantSpec()) -> VariantOutcome:
    """Quantize one variant of a base model, evaluate it beside its base, publish it with its card."""
    logger = get_run_logger()
    # Preflight: everything that can be wrong with the spec, the model, the data, the stores and the tracking server
    # fails here, all problems in one error, before any heavy work (components/preflight.py).
    plan = preflight(spec)
    scheme, suite, engine, suite_key = plan.scheme, plan.suite, plan.engine, plan.suite_digest
    for note in plan.notes:
        logger.warning(note)

    # Creation
    base = resolve_base(spec.base)
    name = spec.variant_name or f"{base.name}-{scheme.suffix}"
    calib = build_calibration(spec.calibration, base) if scheme.needs_calibration else None
    checkpoint = quantize_checkpoint(base, scheme, calib, name)

    # Evaluation: same engine and settings for base and variant (or published baseline scores, marked as such)
    base_eval = plan.reference or evaluate(base.path, base.digest, suite.name, suite_key, engine)
    variant_eval = evaluate(checkpoint.path, checkpoint.digest, suite.name, suite_key, engine)
    table = recovery.table(base_eval.scores, variant_eval.scores)
    verdict = gate(table, rtol=spec.evaluation.rtol, min_average_recovery=spec.evaluation.min_average_recovery)

    # Speed and size beside accuracy: the same engine, settings and prompts for base and variant
    speed = None
    if plan.serving:
        base_speed = measure_serving(base.path, base.digest, engine, spec.evaluation.serving)
        variant_speed = measure_serving(checkpoint.path, checkpoint.digest, engine, spec.evaluation.serving)
        speed = Speed(base=base_speed, variant=variant_speed)

    # Card, publication, lineage
    run_id, run_url = flow_run.get_id(), flow_run.get_flow_run_ui_url()
    facts = CardFacts(name=name, model_id=name, spec=spec, base=base, scheme=scheme, calibration=calib, suite=suite,
                      variant_eval=variant_eval, table=table, gate=verdict, versions=tracking.versions(), speed=speed,
                      baseline_reference=base_eval.reference)
    card = write_card(facts, checkpoint)
    # The checkpoint may come from the cache of a variant with another name (its key is content only): publish as this one.
    published = publish(checkpoint.model_copy(update={"name": name}), spec, scheme)
    mlflow_run = track(
        record=key("record", checkpoint.digest, *(e.model_dump(include={"suite_digest", "settings", "scores"}) for e in (base_eval, variant_eval)),
                   [p.manifest_digest for p in published], speed.model_dump() if speed else None),
        run_name=name, params={"spec": spec.model_dump(mode="json"), "scheme.digest": scheme.digest,
                               "base.digest": base.digest, "checkpoint.digest": checkpoint.digest, "engine": engine.model_dump()},
        base=base, calibration=calib, base_eval=base_eval, variant_eval=variant_eval, table=table, verdict=verdict, published=published,
        speed=speed, suite_file=suite._file, files={"card": Path(card), "recipe": Path(checkpoint.path) / "recipe.yaml", "lm_eval": Path(variant_eval.output_dir)},
        tags={"quantflow.scheme": scheme.name, "quantflow.gate": "passed" if verdict.passed else "failed", "quantflow.prefect_flow_run_id": str(run_id or ""),
              "quantflow.prefect_flow_run_url": str(run_url or "")})

    markdown = accuracy_table(table, base.name, name) + "\n\n" + gate_markdown(verdict)
    if speed:
        markdown += "\n\n" + serving_table(speed, base.name, name)
    if url := tracking.run_url(mlflow_run):
        create_link_artifact(key="mlflow-run", link=url, link_text=f"MLflow run of {name}")
    where = [f"- card: `{card}`"] + [f"- {p.store}: {p.uri}" + (f" (revision `{p.revision}`)" if p.revision else "")
                                     for p in published]
    create_markdown_artifact(key="published", markdown="\n".join(where), description=f"Where {name} was published")
    create_markdown_artifact(key="recovery-table", markdown=markdown, description=f"{name}: recovery vs {base.name}")
    logger.info("Recovery of %s (%s engine):\n%s\nCard: %s\nMLflow run: %s", name, engine.engine, markdown, card, mlflow_run)
    return VariantOutcome(name=name, checkpoint=checkpoint.path, card=card, engine=engine.engine, table=table, gate=verdict, speed=speed,
                          published=published, mlflow_run_id=mlflow_run, flow_run_id=str(run_id))
