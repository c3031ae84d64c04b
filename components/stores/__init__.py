"""Checkpoint stores: one interface (publish a folder with its manifest written last), several backends."""
from __future__ import annotations

from components.specs import StoreSpec
from components.stores.base import CheckpointStore, Published, manifest
from components.stores.local import LocalStore

__all__ = ["CheckpointStore", "Published", "manifest", "open_store"]


def open_store(spec: StoreSpec) -> CheckpointStore:
    if spec.kind == "local":
        return LocalStore(spec.uri)
    raise ValueError(f"unknown store kind {spec.kind!r}")
