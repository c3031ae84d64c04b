"""The store interface and the manifest every store writes last."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from components.digests import digest_obj, sha256_file

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
    revision: str | None = None  # e.g. the Hub commit sha, where the store has one


def manifest(src: Path, meta: dict) -> dict:
    """Files with sizes and sha256, plus run metadata (recipe, spec digest). Readers trust a checkpoint only if it has one."""
    files = [{"path": safe_key_path(p.relative_to(src).as_posix(), "file path"), "size": p.stat().st_size,
              "sha256": sha256_file(p)} for p in sorted(src.rglob("*")) if p.is_file() and p.name != MANIFEST]
    return {"files": files, **meta}


def manifest_bytes(m: dict) -> bytes:
    return json.dumps(m, indent=2, sort_keys=True).encode()


def published(store: str, uri: str, m: dict) -> Published:
    return Published(store=store, uri=uri, manifest_digest=digest_obj(m), files=len(m["files"]),
                     bytes=sum(f["size"] for f in m["files"]))


class CheckpointStore(Protocol):
    kind: str

    def put(self, src: Path, name: str, meta: dict) -> Published:
        """Publish `src` as `name`: every file first, the manifest last; skip what is already there."""

    def get(self, name: str, dest: Path) -> Path:
        """Fetch a published checkpoint whose manifest is complete."""
