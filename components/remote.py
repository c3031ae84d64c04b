"""Artifacts that outlive the machine that made them: with QUANTFLOW_ARTIFACT_STORE set (`s3://bucket/prefix`), each
heavy step uploads its folder, with its stamp in the manifest, as soon as it is made; a cache hit in a home that lacks
the folder (another pod: every home names its own absolute paths) fetches the committed copy, checks it against the
cached result's record, and only then uses it. An absent, uncommitted or damaged copy means the step recomputes.
Unset, nothing here does anything: the home alone holds the artifacts, as it always did.

Objects live under `<prefix>/<root>/<folder>/` (`checkpoints/<name>-<key12>`, `calibration/<digest16>`,
`evals/<key>`, `serving/<key>`: the artifact's path under QUANTFLOW_HOME), written by S3Store: files first, checked by
their checksums, the manifest last, so a copy without its manifest is never fetched.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from components import artifacts
from components.calibration import CalibSet
from components.digests import stamp_file
from components.evaluation.runner import EvalResult
from components.evaluation.serving import ServingResult
from components.messages import Checked, first_line
from components.outcomes import Checkpoint
from components.redaction import credentials_in_url, redact_url
from components.settings import settings
from components.stores.base import MANIFEST, StoreError

# Result type -> (the field naming its folder, the folder's parent under QUANTFLOW_HOME)
WHERE: dict[type, tuple[str, str]] = {CalibSet: ("path", "calibration"), Checkpoint: ("path", "checkpoints"),
                                      EvalResult: ("output_dir", "evals"), ServingResult: ("output_dir", "serving")}
# What a result's own check compares with its stamp's record (None: all of it); as its `artifact_problems` does
RECORDED: dict[type, set[str] | None] = {Checkpoint: {"digest", "files"}}


def store():
    """The configured artifact store (an S3Store that replaces a changed copy, never keeps revisions), or None."""
    uri = settings().artifact_store
    if not uri:
        return None
    if credentials_in_url(uri):
        raise ValueError(f"QUANTFLOW_ARTIFACT_STORE {redact_url(uri)!r} carries credentials in the URL (they would be "
                         "printed and recorded): remove them and use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                         "AWS_PROFILE")
    from components.stores.s3 import S3Store

    return S3Store.from_uri(uri, create_bucket=True, keep_revisions=False)


def _tracked(result: BaseModel) -> tuple[str, str] | None:
    where = WHERE.get(type(result))
    return where if where and getattr(result, where[0]) else None


def key(result: BaseModel) -> str:
    """The artifact's name in the store: its path under the home that made it."""
    field, root = WHERE[type(result)]
    return f"{root}/{Path(getattr(result, field)).name}"


def localized(result: BaseModel):
    """`result` naming its folder under this home (a result cached by another home names that home's path)."""
    if (where := _tracked(result)) is None:
        return result
    field, root = where
    here = str(settings().path(root) / Path(getattr(result, field)).name)
    return result if here == getattr(result, field) else result.model_copy(update={field: here})


def upload(result: BaseModel, logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Upload the folder `result` describes with its stamp (idempotent: an object already there with the same
    checksum is not sent again). A failed upload is a warning, not a failed step: the artifact is whole here, another
    home recomputes it."""
    if _tracked(result) is None or (st := store()) is None:
        return
    out = Path(getattr(result, WHERE[type(result)][0]))
    stamp = artifacts.read_stamp(out)
    if stamp is None:
        logger.warning("artifact store: not uploading %s: it has no stamp", out)
        return
    try:
        st.put(out, key(result), {"artifact": key(result), "stamp": stamp.model_dump(mode="json")},
               known={f.path: f for f in stamp.files})
    except (StoreError, ValueError) as e:
        logger.warning("artifact store: %s not uploaded (%s): another home will recompute it", key(result), first_line(e))
        return
    logger.info("artifact store: uploaded %s to %s (%d files)", key(result), st.uri(key(result)), len(stamp.files))


def fetch(result: BaseModel, logger: logging.Logger | logging.LoggerAdapter) -> bool:
    """Put the store's committed copy of `result`'s folder in this home (`localized(result)` names it), under the
    artifact's lock: downloaded into a work folder, each file checked by its sha256 against the manifest, the manifest
    against the cached result's record, then renamed in and stamped here. True once it is there and checked; False,
    with the reason logged, when the store has no committed copy or a copy that differs (the caller recomputes)."""
    if _tracked(result) is None or (st := store()) is None:
        return False
    local, name = localized(result), key(result)
    out = Path(getattr(local, WHERE[type(local)][0]))
    with artifacts.locked(out):
        if not local.artifact_problems():  # another run here fetched or made it while this one waited
            return True
        tmp = artifacts.workdir(out)
        try:
            why, files, exclude = _download(st, name, tmp, result)
            if why:
                logger.warning("artifact store: %s not fetched: %s", name, why)
                return False
            artifacts.install(tmp, out, local, exclude=exclude, files=files)
        finally:
            artifacts.remove(tmp)
    logger.info("artifact store: fetched %s from %s into %s, checked against its record", name, st.uri(name), out)
    return True


def _download(st, name: str, tmp: Path, result: BaseModel) -> tuple[str | None, list, tuple[str, ...]]:
    """(why the copy cannot be used or None, its files stamped here, the stamp's excluded files)."""
    try:
        m = st.manifest_of(name)
    except StoreError as e:
        return first_line(e), [], ()
    if m is None:
        return "no committed copy in the store (never uploaded, or its upload did not finish)", [], ()
    try:
        stamp = artifacts.Stamp.model_validate(m["stamp"])
    except (KeyError, ValueError):
        return "its manifest holds no stamp", [], ()
    fields = RECORDED.get(type(result))
    try:  # both as they read in this home: the record names the home that made it, `result` maybe this one
        recorded = localized(type(result).model_validate(stamp.result)).model_dump(mode="json")
    except ValueError:
        return "its stamp holds no result of this kind", [], ()
    described = localized(result).model_dump(mode="json")
    if fields is not None:
        recorded, described = ({k: d.get(k) for k in fields} for d in (recorded, described))
    if recorded != described:
        return "the store's copy is another artifact than the cached result describes", [], ()
    listed = {f["path"]: (f["size"], f["sha256"]) for f in m["files"]}
    if listed != {f.path: (f.size, f.sha256) for f in stamp.files}:
        return "its manifest lists other files than its stamp", [], ()
    try:
        st.get(name, tmp)  # every file's sha256 checked against the manifest as it lands
    except StoreError as e:
        return first_line(e), [], ()
    (tmp / MANIFEST).unlink(missing_ok=True)
    files = [stamp_file(tmp / f.path, f.path, f.sha256) for f in stamp.files]
    return None, files, tuple(stamp.exclude)


def check() -> Checked[None]:
    """The artifact store, when one is configured: a URI without credentials, the endpoint answers and accepts the
    credentials, the bucket is there or can be made (one listing call, nothing written). No value."""
    if not settings().artifact_store:
        return Checked()
    try:
        st = store()
        found = st.problems(None)
    except (ValueError, StoreError) as e:
        return Checked(problems=[f"QUANTFLOW_ARTIFACT_STORE: {first_line(e)}"])
    return Checked(problems=[f"QUANTFLOW_ARTIFACT_STORE (s3://{st.bucket}/{st.prefix}): {p}" for p in found])

