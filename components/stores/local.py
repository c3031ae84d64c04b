"""Local-filesystem store: the embedded default.

`<root>/<name>/` holds the current revision (files + manifest). Publishing other content under that name moves the
previous revision, whole, to `<root>/.revisions/<name>/<revision>/` first; each copy is re-hashed against the
manifest before it is renamed into place, all under the name's lock.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from components import artifacts
from components.digests import FileStamp, sha256_file
from components.settings import settings
from components.stores.base import MANIFEST, Published, StoreError, manifest, manifest_bytes, published, revision_of

log = logging.getLogger(__name__)
REVISIONS = ".revisions"


class LocalStore:
    kind = "local"

    def __init__(self, root: str | None = None):
        # Not created here: preflight opens the store to check it and must write nothing; `put` creates it.
        self.root = Path(root).expanduser() if root else settings().home.resolve() / "published"

    def problems(self, name: str | None) -> list[str]:
        """What would stop publishing `name` here (one line each, with the fix), without writing anything."""
        root = self.root
        if root.exists() and not root.is_dir():
            return [f"{root} exists and is not a directory"]
        if name is not None and root.resolve() not in (root / name).resolve().parents:
            return [f"checkpoint name {name!r} escapes the store root {root}: set variant_name to a plain name"]
        return []

    def _dir(self, name: str) -> Path:
        target = (self.root / name).resolve()
        if self.root.resolve() not in target.parents or name.split("/")[0] == REVISIONS:
            raise ValueError(f"checkpoint name {name!r} escapes the store root {self.root}")
        return target

    def revision_dir(self, name: str, revision: str) -> Path:
        """Where an earlier revision of `name` stays once other content was published under that name."""
        return self.root.resolve() / REVISIONS / name / revision

    @staticmethod
    def _manifest(d: Path) -> dict | None:
        try:
            return json.loads((d / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _problems(d: Path, m: dict) -> list[str]:
        """Files of `d` that are not as the manifest says (size, then sha256), or extra."""
        out = []
        for f in m["files"]:
            p = d / f["path"]
            if not p.is_file():
                out.append(f"{f['path']} is missing")
            elif p.stat().st_size != f["size"]:
                out.append(f"{f['path']} has {p.stat().st_size} bytes, the manifest says {f['size']}")
            elif sha256_file(p) != f["sha256"]:
                out.append(f"{f['path']}: its sha256 is not the manifest's")
        listed = {f["path"] for f in m["files"]} | {MANIFEST}
        out += [f"{p.relative_to(d).as_posix()} is not in the manifest" for p in sorted(d.rglob("*"))
                if p.is_file() and p.relative_to(d).as_posix() not in listed]
        return out

    def put(self, src: Path, name: str, meta: dict, known: dict[str, FileStamp] | None = None) -> Published:
        src = Path(src)
        dest = self._dir(name)
        m = manifest(src, meta, known)
        rev = revision_of(m)
        with artifacts.locked(dest):
            old = self._manifest(dest)
            if old == m and not self._problems(dest, m):
                log.info("%s: the same content is already published (revision %s)", dest, rev)
                return published(self.kind, dest.as_uri(), m).model_copy(update={"revision": rev})
            tmp = artifacts.workdir(dest)
            try:
                tmp.mkdir(parents=True)
                for f in m["files"]:
                    (tmp / f["path"]).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / f["path"], tmp / f["path"])
                if problems := self._problems(tmp, m):
                    raise StoreError(f"not published to {dest}: the copy does not match the manifest "
                                     f"({'; '.join(problems[:3])}); the source changed since it was recorded: rerun")
                (tmp / MANIFEST).write_bytes(manifest_bytes(m))
                if old is not None and old != m:
                    keep = self.revision_dir(name, revision_of(old))
                    keep.parent.mkdir(parents=True, exist_ok=True)
                    if keep.exists():
                        artifacts.remove(keep)
                    dest.rename(keep)
                    log.warning("%s: other content under an existing name: published as new revision %s; the previous "
                                "revision %s stays at %s", dest, rev, revision_of(old), keep)
                elif dest.exists():
                    artifacts.remove(dest)  # incomplete or damaged copy of this same content
                tmp.replace(dest)
            finally:
                artifacts.remove(tmp)
        return published(self.kind, dest.as_uri(), m).model_copy(update={"revision": rev})

    def get(self, name: str, dest: Path, revision: str | None = None) -> Path:
        """The current revision of `name`, or the one named `revision` (current or kept under .revisions)."""
        src = self._dir(name)
        m = self._manifest(src)
        if revision and (m is None or revision_of(m) != revision):
            src = self.revision_dir(name, revision)
            m = self._manifest(src)
        if m is None or (revision and revision_of(m) != revision):
            raise FileNotFoundError(f"no complete checkpoint {name!r}{f'@{revision}' if revision else ''} in {self.root} "
                                    "(manifest missing)")
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest
