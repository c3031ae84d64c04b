"""What a variant's flow run produces, importable under one name everywhere.

Persisted results are pickled by class path: a deployment loads flows/quantize_variant.py as a module named after the
file, a CLI run as `flows.quantize_variant`; classes defined there would differ between the run that cached a result
and the run that reads it (and a cached checkpoint would fail its integrity check). Defined here, they do not.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from components import artifacts, recovery
from components.digests import FileStamp
from components.evaluation.serving import Speed
from components.gate import GateVerdict
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
