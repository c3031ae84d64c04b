"""The store interface and the manifest every store writes last."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from components.digests import digest_obj, sha256_file

MANIFEST = "quantflow-manifest.json"


class Published(BaseModel):
    store: str
    uri: str
    manifest_digest: str
    files: int
    bytes: int


def manifest(src: Path, meta: dict) -> dict:
    """Files with sizes and sha256, plus run metadata (recipe, spec digest). Readers trust a checkpoint only if it has one."""
    files = [{"path": p.relative_to(src).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(src.rglob("*")) if p.is_file() and p.name != MANIFEST]
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
