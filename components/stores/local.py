"""Local-filesystem store: the embedded default."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from components.settings import settings
from components.stores.base import MANIFEST, Published, manifest, manifest_bytes, published


class LocalStore:
    kind = "local"

    def __init__(self, root: str | None = None):
        self.root = Path(root) if root else settings().path("published")

    def _dir(self, name: str) -> Path:
        target = (self.root / name).resolve()
        if self.root.resolve() not in target.parents:
            raise ValueError(f"checkpoint name {name!r} escapes the store root {self.root}")
        return target

    def put(self, src: Path, name: str, meta: dict) -> Published:
        m = manifest(src, meta)
        dest = self._dir(name)
        if (dest / MANIFEST).exists() and json.loads((dest / MANIFEST).read_text()) == m:
            return published(self.kind, dest.as_uri(), m)
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(MANIFEST))
        (tmp / MANIFEST).write_bytes(manifest_bytes(m))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.replace(dest)
        return published(self.kind, dest.as_uri(), m)

    def get(self, name: str, dest: Path) -> Path:
        src = self._dir(name)
        if not (src / MANIFEST).exists():
            raise FileNotFoundError(f"no complete checkpoint {name!r} in {self.root} (manifest missing)")
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest
