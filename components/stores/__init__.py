"""Checkpoint stores: one interface (publish a folder with its manifest written last), several backends."""
from __future__ import annotations

from components.specs import StoreSpec
from components.stores.base import CheckpointStore, Published, manifest
from components.stores.local import LocalStore

__all__ = ["CheckpointStore", "Published", "manifest", "open_store"]


def open_store(spec: StoreSpec) -> CheckpointStore:
    if spec.kind == "local":
        return LocalStore(spec.uri)
    if spec.kind == "s3":
        from components.stores.s3 import S3Store

        return S3Store.from_uri(spec.uri, endpoint_url=spec.endpoint_url, region=spec.region,
                                create_bucket=spec.create_bucket, credentials_block=spec.credentials)
    if spec.kind == "hub":
        from components.stores.hub import HubStore

        return HubStore(spec.uri, private=spec.private, endpoint=spec.endpoint_url, token_secret=spec.credentials)
    raise ValueError(f"unknown store kind {spec.kind!r}")
