"""What a finished `tracking.log_variant` left in MLflow, remembered, and checked on a rerun without importing mlflow.

Why: a cached rerun's MLflow step only finds the run it already recorded, yet importing mlflow and opening its store
(SQLite runs the schema check) cost ~5 s of a ~12 s rerun (docs/benchmarks.md). The stamp names the run, its experiment
and its registered version; it is used only once MLflow itself says they are still there, as they were left:

- the run: FINISHED, not deleted, in a live experiment, tagged with this record's digest;
- when the variant was published: the registered version still belongs to that run (a deleted version has no run);
- when the gate passed: the `candidate` alias still points at that version.

MLflow is asked through its REST API (`/api/2.0/mlflow/...`, the server's public contract) when tracking goes to a
server, and through a read-only SQLite connection to the default store's tables (`runs`, `tags`, `experiments`,
`model_versions`, `registered_model_aliases`) when it is a local file. Anything else (other databases, auth plugins,
an error of any kind) is a miss: `tracking` then takes its full path through mlflow, which finds or makes the run.

The stamp's key is the record's digest, the tracking URI, what the run carries besides (variant name, published or
not, passed or not, the experiment view), the source of `tracking` and of this module, and mlflow's installed RECORD:
new code or a new mlflow goes through mlflow again. Stamps live in `$QUANTFLOW_HOME/tracked/<key>.json`, written whole.
"""
from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote

from pydantic import BaseModel, ValidationError

from components.artifacts import write_memo
from components.digests import code_digest, digest_obj, library_identity
from components.settings import settings

CODE = ("components.tracking", "components.recorded")
TIMEOUT_S = 5


class Recorded(BaseModel):
    """One variant as MLflow holds it."""

    key: str
    run_id: str
    experiment_id: str
    model: str | None = None  # registered model name, when published
    version: str | None = None
    candidate: bool = False  # the alias `candidate` points at `version`


def key(uri: str, record: str, name: str, published: bool, passed: bool, view: str) -> str:
    return digest_obj([uri, record, name, published, passed, view, code_digest(CODE), library_identity("mlflow")])[:32]


def _path(k: str) -> Path:
    return settings().home.expanduser().resolve() / "tracked" / f"{k}.json"


def remember(stamp: Recorded) -> None:
    write_memo(_path(stamp.key), stamp.model_dump_json())  # unwritten, the next rerun takes mlflow's path


def recall(uri: str, record: str, k: str) -> Recorded | None:
    """The remembered variant, if MLflow still holds it as it was left; else None (take mlflow's path)."""
    try:
        stamp = Recorded.model_validate_json(_path(k).read_text())
    except (OSError, ValidationError):
        return None
    if stamp.key != k:
        return None
    try:
        if uri.startswith(("http://", "https://")):
            held = _held_rest(uri, stamp, record)
        elif uri.startswith("sqlite:///"):
            held = _held_sqlite(uri, stamp, record)
        else:
            return None
    except Exception:  # noqa: BLE001 - any doubt is a miss: mlflow's own path decides
        return None
    return stamp if held else None


def _held_sqlite(uri: str, s: Recorded, record: str) -> bool:
    path = Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))  # SQLAlchemy's form: four slashes if absolute
    if not path.is_file():
        return False
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=TIMEOUT_S)) as db:
        run = db.execute("SELECT 1 FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
                         "JOIN tags t ON t.run_uuid = r.run_uuid WHERE r.run_uuid = ? AND r.experiment_id = ? "
                         "AND r.status = 'FINISHED' AND r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active' "
                         "AND t.key = 'quantflow.record' AND t.value = ?", (s.run_id, s.experiment_id, record)).fetchone()
        if run is None:
            return False
        if s.model is not None:
            version = db.execute("SELECT 1 FROM model_versions WHERE name = ? AND version = ? AND run_id = ? "
                                 "AND status = 'READY'", (s.model, int(s.version), s.run_id)).fetchone()
            if version is None:
                return False
        if s.candidate:
            alias = db.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = 'candidate'",
                               (s.model,)).fetchone()
            return alias is not None and str(alias[0]) == s.version
    return True


def _held_rest(uri: str, s: Recorded, record: str) -> bool:
    import httpx

    if os.environ.get("MLFLOW_TRACKING_AUTH") or os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        return False  # an auth plugin or client certificate: only mlflow's client knows how to speak to it
    headers, auth = {}, None
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or \
        os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
    with httpx.Client(base_url=f"{uri.rstrip('/')}/api/2.0/mlflow", headers=headers, auth=auth, verify=verify,
                      timeout=TIMEOUT_S) as client:
        def get(path: str, **params) -> dict | None:
            r = client.get(path, params=params)
            return r.json() if r.status_code == 200 else None

        run = (get("/runs/get", run_id=s.run_id) or {}).get("run", {})
        info, tags = run.get("info", {}), {t["key"]: t.get("value") for t in run.get("data", {}).get("tags", [])}
        if not (info.get("experiment_id") == s.experiment_id and info.get("status") == "FINISHED"
                and info.get("lifecycle_stage") == "active" and tags.get("quantflow.record") == record):
            return False
        experiment = (get("/experiments/get", experiment_id=s.experiment_id) or {}).get("experiment", {})
        if experiment.get("lifecycle_stage") != "active":
            return False
        if s.model is not None:
            version = (get("/model-versions/get", name=s.model, version=s.version) or {}).get("model_version", {})
            if version.get("run_id") != s.run_id or version.get("status") != "READY":
                return False
        if s.candidate:
            alias = (get("/registered-models/alias", name=s.model, alias="candidate") or {}).get("model_version", {})
            return str(alias.get("version")) == s.version
    return True
