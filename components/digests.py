"""Content digests: the only inputs to cache keys, and the record an artifact is checked against before use."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

CHUNK = 1 << 20


class FileStamp(BaseModel):
    """One file as it was when its artifact was made: size and mtime for a cheap check, sha256 for a sure one."""

    path: str  # relative to the artifact, '/'-separated
    size: int
    mtime_ns: int
    sha256: str


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
    return FileStamp(path=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256 or sha256_file(f))


def stamp_dir(path: Path, exclude: tuple[str, ...] = (), memo: Path | None = None) -> list[FileStamp]:
    """Every file under `path` (sorted); with `memo`, an unchanged file (size, mtime, inode) is not hashed again."""
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

    Cheap by default: a file whose size and mtime are as recorded is trusted; any doubt (or `full`) hashes it.
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
        elif (full or st.st_mtime_ns != s.mtime_ns) and sha256_file(f) != s.sha256:
            problems.append(f"{s.path} has another sha256 than recorded")
    return problems


def sha256_memo(path: Path, memo: Path) -> str:
    """sha256 of `path`, remembered in `memo` by (size, mtime, inode): a big base model is hashed once, not per run."""
    path = Path(path).resolve()
    st = path.stat()
    ident = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
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


def digest_obj(obj: Any) -> str:
    """Digest of a JSON-serialisable object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


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


def library_identity(name: str) -> str:
    """sha256 of the installed distribution's RECORD (every file's hash), else `<version>` or `absent`."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"
    record = dist.read_text("RECORD")
    return hashlib.sha256(record.encode()).hexdigest() if record else f"version {dist.version}"
