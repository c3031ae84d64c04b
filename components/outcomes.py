"""What a variant's flow run produces, importable under one name everywhere: the checkpoint, the record of the run
(what the card, the publication and MLflow read) and the outcome the flow returns.

Persisted results are pickled by class path: a deployment loads flows/quantize_variant.py as a module named after the
file, a CLI run as `flows.quantize_variant`; classes defined there would differ between the run that cached a result
and the run that reads it (and a cached checkpoint would fail its integrity check). Defined here, they do not.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from components import artifacts, recovery
from components.calibration import CalibSet
from components.digests import FileStamp, digest_obj
from components.evaluation.runner import EvalResult
from components.evaluation.serving import Speed
from components.evaluation.suites import Suite
from components.gate import GateVerdict
from components.memory_plan import Settings
from components.models import ModelRef
from components.recipes import SchemeDef
from components.specs import VariantSpec
from components.stores import Published


CARD = "README.md"  # written into the checkpoint after it is made: in no stamp, digest or cache key


class Checkpoint(BaseModel):
    name: str
    path: str
    digest: str  # content without the card
    files: list[FileStamp] = []  # as made (without the card): checked before every use; the manifest's sha256

    def artifact_problems(self) -> list[str]:
        """How the checkpoint differs from its stamp, hashed in full (what is evaluated is what gets published); the
        stamp must record this content, under any name (a cached checkpoint is published under the variant's)."""
        return artifacts.problems(Path(self.path), self, full=True, fields={"digest", "files"})


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


class VariantRecord(BaseModel):
    """One finished variant, every fact once, built by the flow after the gate: the card is rendered from it, the
    publication and MLflow read it, and the flow returns its `outcome`."""

    name: str
    spec: VariantSpec
    scheme: SchemeDef
    base: ModelRef
    calibration: CalibSet | None
    quantization: Settings | None = None  # where llm-compressor put the model and the activations (the memory plan)
    checkpoint: Checkpoint  # as made: from the cache it may carry another variant's name (its key is content only)
    suite: Suite
    suite_file: Path | None  # the suite's own file (a Suite read back from JSON no longer knows it)
    base_eval: EvalResult  # measured here, or the published baseline (`baseline_reference`)
    variant_eval: EvalResult
    table: recovery.RecoveryTable
    gate: GateVerdict
    speed: Speed | None = None  # serving benchmark of base and variant, where vLLM runs the scheme
    versions: dict[str, str]  # the libraries that made and measured it
    published: list[Published] = []  # set once the checkpoint and its card are published
    flow_run_id: str = ""
    flow_run_url: str = ""

    @property
    def card(self) -> Path:
        return Path(self.checkpoint.path) / CARD

    @property
    def baseline_reference(self) -> str | None:
        """Where the baseline column was published, when it was not measured here."""
        return self.base_eval.reference

    @property
    def digest(self) -> str:
        """Of the content recorded (checkpoint, both evaluations' scores and settings, publications, speed), never of
        paths or run ids: the same variant made again records nothing new (MLflow finds its run by it)."""
        evals = [e.model_dump(include={"suite_digest", "settings", "scores"}) for e in (self.base_eval, self.variant_eval)]
        parts = [self.checkpoint.digest, *evals, [p.manifest_digest for p in self.published],
                 self.speed.model_dump() if self.speed else None]
        return f"record-{digest_obj(parts)[:32]}"

    def outcome(self, mlflow_run_id: str) -> VariantOutcome:
        """What the flow returns (a sweep and a deployment run's caller read it from result storage)."""
        return VariantOutcome(name=self.name, checkpoint=self.checkpoint.path, card=str(self.card),
                              engine=self.variant_eval.settings.engine, table=self.table, gate=self.gate, speed=self.speed,
                              published=self.published, mlflow_run_id=mlflow_run_id, flow_run_id=self.flow_run_id)
