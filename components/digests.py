"""Content digests: the only inputs to cache keys, and the record an artifact is checked against before use."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

CHUNK = 1 << 20


class FileStamp(BaseModel):
    """One file as it was when its artifact was made: size, mtime, ctime and inode for a cheap check, sha256 for a sure
    one. ctime and inode are there because `os.utime` sets an mtime back but cannot set a ctime back, and a file
    replaced by another has another inode; a stamp recorded before they were (None) is trusted only after hashing."""

    path: str  # relative to the artifact, '/'-separated
    size: int
    mtime_ns: int
    sha256: str
    ctime_ns: int | None = None
    ino: int | None = None

    def unchanged(self, st: os.stat_result) -> bool:
        """True when `st` shows the file as stamped (cheap; the content is not read): any doubt is False."""
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == (self.size, self.mtime_ns, self.ctime_ns, self.ino)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(path: Path, exclude: tuple[str, ...]) -> list[tuple[str, Path]]:
    path = Path(path)
    return [(f.relative_to(path).as_posix(), f) for f in sorted(p for p in path.rglob("*") if p.is_file())
            if f.relative_to(path).as_posix() not in exclude]


def stamp_file(f: Path, rel: str, sha256: str | None = None) -> FileStamp:
    st = f.stat()
    return FileStamp(path=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino,
                     sha256=sha256 or sha256_file(f))


def stamp_dir(path: Path, exclude: tuple[str, ...] = (), memo: Path | None = None) -> list[FileStamp]:
    """Every file under `path` (sorted); with `memo`, an unchanged file (size, mtime, ctime, inode) is not hashed again."""
    return [stamp_file(f, rel, sha256_memo(f, memo) if memo else None) for rel, f in _files(path, exclude)]


def digest_stamps(stamps: list[FileStamp]) -> str:
    """The directory digest of `digest_dir`, from stamps already taken."""
    h = hashlib.sha256()
    for s in sorted(stamps, key=lambda s: s.path):
        h.update(s.path.encode() + b"\0" + s.sha256.encode() + b"\n")
    return h.hexdigest()


def digest_dir(path: Path, exclude: tuple[str, ...] = ()) -> str:
    """Digest of every file's relative path and content under `path`."""
    return digest_stamps(stamp_dir(path, exclude))


def check_stamps(root: Path, stamps: list[FileStamp], full: bool = False, exclude: tuple[str, ...] = ()) -> list[str]:
    """What differs between `root` now and `stamps`: missing or unexpected files, then per file size, then sha256.

    Cheap by default: a file whose size, mtime, ctime and inode are as recorded is trusted; any doubt (or `full`)
    hashes it.
    """
    root = Path(root)
    if not root.exists():
        return [f"{root} is missing"]
    now = dict(_files(root, exclude)) if root.is_dir() else {root.name: root}
    problems = [f"{s.path} is missing" for s in stamps if s.path not in now]
    problems += [f"{rel} was not there when it was made" for rel in sorted(set(now) - {s.path for s in stamps})]
    for s in stamps:
        f = now.get(s.path)
        if f is None:
            continue
        st = f.stat()
        if st.st_size != s.size:
            problems.append(f"{s.path} has {st.st_size} bytes, {s.size} recorded")
        elif (full or not s.unchanged(st)) and sha256_file(f) != s.sha256:
            problems.append(f"{s.path} has another sha256 than recorded")
    return problems


def sha256_memo(path: Path, memo: Path) -> str:
    """sha256 of `path`, remembered in `memo` by (size, mtime, ctime, inode): a big base model is hashed once, not per
    run; a file rewritten in place is hashed again even with its mtime set back (its ctime moved)."""
    path = Path(path).resolve()
    st = path.stat()
    ident = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}
    entry = Path(memo) / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    try:
        known = json.loads(entry.read_text())
        if {k: known.get(k) for k in ident} == ident:
            return known["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f"{entry.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({**ident, "sha256": digest, "path": str(path)}))
    os.replace(tmp, entry)
    return digest


def _not_json(obj: Any) -> Any:
    raise TypeError(f"digest_obj takes plain JSON (dict, list, str, int, float, bool, None), not {type(obj).__module__}."
                    f"{type(obj).__qualname__}: digest its content explicitly (a Pydantic model: model_dump(mode='json'))")


def digest_obj(obj: Any) -> str:
    """Digest of plain JSON data (keys sorted). Anything else is a TypeError, never its repr: a repr may be a
    summary (a lazy dataset column shows five rows), and two different contents would share a digest."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_not_json).encode()).hexdigest()


@functools.cache
def code_digest(modules: tuple[str, ...], packages: tuple[str, ...] = ()) -> str:
    """Digest of the source files of `modules` and the installed versions of `packages`: what produced an artifact."""
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ModuleNotFoundError(f"cannot digest the code of {name}: module not found")
        h.update(name.encode() + b"\0" + Path(spec.origin).read_bytes() + b"\n")
    for name in packages:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        h.update(f"{name}=={version}\n".encode())
    return h.hexdigest()


def library_identity(name: str, path: list[str] | None = None) -> str:
    """sha256 of the installed distribution's RECORD (every file's hash), else `<version>` or `absent`; looked up
    in `path` (another environment's sys.path: only its metadata is read, nothing imported), default this one's."""
    dist = next(iter(importlib.metadata.distributions(name=name, path=sys.path if path is None else path)), None)
    if dist is None:
        return "absent"
    record = dist.read_text("RECORD")
    return hashlib.sha256(record.encode()).hexdigest() if record else f"version {dist.version}"
