"""Checkpoint stores: one interface (publish a folder with its manifest written last), several backends."""
from __future__ import annotations

from components.messages import Checked, first_line
from components.specs import StoreSpec
from components.stores.base import CheckpointStore, Published, manifest
from components.stores.local import LocalStore

__all__ = ["CheckpointStore", "Published", "manifest", "check", "open_store"]


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


def check(specs: list[StoreSpec], name: str | None) -> Checked[None]:
    """Every store's problems with publishing `name`, each line naming the store (`stores[i] (kind uri)`): found
    before the run, so a store that would refuse the checkpoint hours later is fixed first. No value."""
    out = []
    for i, spec in enumerate(specs):
        where = f"stores[{i}] ({spec.kind}{' ' + spec.uri if spec.uri else ''})"
        try:
            store = open_store(spec)
        except Exception as e:  # noqa: BLE001 - bad bucket/repo ids, credential blocks that do not load
            out.append(f"{where}: {first_line(e)}")
            continue
        try:
            out += [f"{where}: {p}" for p in store.problems(name)]
        except Exception as e:  # noqa: BLE001 - a check that cannot run is itself a finding
            out.append(f"{where}: {type(e).__name__}: {first_line(e)}")
    return Checked(problems=out)
