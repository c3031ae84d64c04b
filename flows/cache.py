"""Cache keys from content digests plus code version, never from paths or timestamps."""
from __future__ import annotations

import importlib.metadata

from components.digests import digest_obj


def code_version() -> str:
    try:
        return importlib.metadata.version("quantflow")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def key(step: str, *parts) -> str:
    return f"{step}-{digest_obj([code_version(), step, *parts])[:32]}"
