"""The store interface and the manifest every store writes last."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Protocol

from pydantic import BaseModel

from components.digests import FileStamp, digest_obj, sha256_file

MANIFEST = "quantflow-manifest.json"
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9!_.*'()=+,;:@ \-]+$")


class StoreError(RuntimeError):
    """A store could not publish or fetch a checkpoint; the message says why (never with a secret in it)."""


class CheckpointNotFound(StoreError, FileNotFoundError):
    """No complete checkpoint (its manifest is missing)."""


def safe_key_path(path: str, what: str = "checkpoint name") -> str:
    """A relative, '/'-separated path whose every segment is a plain name: no '..', '.', empty or absolute parts."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what} must be a non-empty string")
    if path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"{what} {path!r} must be a relative '/'-separated path")
    for seg in path.split("/"):
        if seg in ("", ".", ".."):
            raise ValueError(f"{what} {path!r} has an empty, '.' or '..' segment")
        if not _SEGMENT_RE.match(seg):
            raise ValueError(f"{what} {path!r}: segment {seg!r} has characters not allowed in an object key")
    return path


class Published(BaseModel):
    store: str
    uri: str
    manifest_digest: str
    files: int
    bytes: int
    revision: str | None = None  # Hub: the commit sha; local and S3: `revision_of(manifest)`


def manifest(src: Path, meta: dict, known: dict[str, FileStamp] | None = None) -> dict:
    """Files with sizes and sha256, plus run metadata (recipe, spec digest). Readers trust a checkpoint only if it has one.

    `known`: files as recorded when the checkpoint was made; their size and sha256 are taken from the record, not
    from the disk, so a file damaged since then makes the store's check of what it wrote fail instead of publishing it.
    """
    known = known or {}
    files = []
    for p in sorted(Path(src).rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and p.name != MANIFEST:
            rec = known.get(rel)
            files.append({"path": safe_key_path(rel, "file path"), "size": rec.size if rec else p.stat().st_size,
                          "sha256": rec.sha256 if rec else sha256_file(p)})
    missing = sorted(set(known) - {f["path"] for f in files})
    if missing:
        raise StoreError(f"not publishing {src}: {', '.join(missing[:3])} recorded when it was made but missing now; "
                         "rerun to recompute it")
    return {"files": files, **meta}


def revision_of(m: dict) -> str:
    """A store without native revisions names a published content by its manifest's digest."""
    return digest_obj(m)[:12]


def manifest_bytes(m: dict) -> bytes:
    return json.dumps(m, indent=2, sort_keys=True).encode()


def published(store: str, uri: str, m: dict) -> Published:
    return Published(store=store, uri=uri, manifest_digest=digest_obj(m), files=len(m["files"]),
                     bytes=sum(f["size"] for f in m["files"]))


def name_problems(check: Callable[[str], object], name: str | None) -> list[str]:
    """A checkpoint name the store's own `check` refuses (it raises ValueError), with the fix; none for `name` None."""
    if name is None:
        return []
    try:
        check(name)
    except ValueError as e:
        return [f"{e}: set variant_name to a plain name"]
    return []


class CheckpointStore(Protocol):
    kind: str

    def put(self, src: Path, name: str, meta: dict, known: dict[str, FileStamp] | None = None) -> Published:
        """Publish `src` as `name`: every file first, checked against the manifest, the manifest last.

        The same content again is a no-op; other content under an existing name becomes a new revision (logged),
        the previous one stays reachable (`Published.revision` names the new one)."""

    def get(self, name: str, dest: Path) -> Path:
        """Fetch a published checkpoint whose manifest is complete."""

    def problems(self, name: str | None) -> list[str]:
        """What would stop publishing `name` here, one line each with the fix, found before the run and without
        writing anything (`name` None: the store alone)."""
