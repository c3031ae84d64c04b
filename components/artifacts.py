"""Artifacts under QUANTFLOW_HOME: made under a per-artifact lock in a uniquely named temporary folder, renamed
whole, and stamped (per file: size, mtime, ctime, inode, sha256, plus the result that describes them) so that every
later use, a cache hit or a concurrent run that waited for the lock, can check they are still what was made."""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from filelock import FileLock
from pydantic import BaseModel

from components.digests import FileStamp, check_stamps, stamp_dir

R = TypeVar("R", bound=BaseModel)


class IntegrityError(RuntimeError):
    """An artifact is not what was recorded when it was made."""


class DiskFullError(OSError):
    """A write that ran out of disk: names the path and the free space left there."""


@contextmanager
def disk_named(path: Path, what: str) -> Iterator[None]:
    """A full disk while writing `what` to `path` (OSError ENOSPC, or a library's wrapped 'os error 28', as
    safetensors raises) becomes one DiskFullError naming the path, the free space there and the fix."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - only a full disk is translated; anything else goes on as it was
        if not (isinstance(e, OSError) and e.errno == errno.ENOSPC) and not (
                "No space left on device" in str(e) or "os error 28" in str(e)):
            raise
        from components.settings import existing

        free = shutil.disk_usage(existing(Path(path))).free
        raise DiskFullError(errno.ENOSPC, f"no space left on device while writing {what} to {path} "
                                          f"({free / (1 << 30):.2f} GiB free there now): free some space, or set "
                                          "QUANTFLOW_HOME to a larger disk") from e


class Stamp(BaseModel):
    files: list[FileStamp]
    exclude: list[str] = []  # files written later on purpose (the card in a checkpoint)
    result: dict  # the result model that describes the artifact, as the producing task returned it


def stamp_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".stamp.json")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold `<path>.lock` (a filelock lock: another process making the same artifact waits for it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(path.name + ".lock"))):
        yield


def partial(path: Path) -> Path:
    """A temporary name next to `path` no other run uses."""
    return Path(path).with_name(f"{Path(path).name}.partial-{uuid.uuid4().hex[:12]}")


def workdir(path: Path) -> Path:
    """A fresh temporary name for making `path`; what killed runs left under such names goes first.

    Only for a caller holding `locked(path)`: every writer of `<path>.partial-*` holds that lock.
    """
    path = Path(path)
    for stale in path.parent.glob(f"{path.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    return partial(path)


def remove(path: Path) -> None:
    """Remove a file or folder; a folder is renamed aside first so that nobody sees it half-deleted."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        aside = partial(path)
        path.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_whole(path: Path, text: str) -> None:
    """Write `path` under a temporary name, then rename it in: a reader sees the old file or the new one, never half
    of one; a failed write leaves no temporary file."""
    tmp = partial(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_memo(path: Path, text: str) -> None:
    """`write_whole` for what only saves time (preflight facts, the task index, a recorded variant's stamp): its folder
    made on the way; a memo that cannot be written is only a lost speed-up, never an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, text)
    except OSError:
        pass


def install(tmp: Path, out: Path, result: BaseModel, exclude: tuple[str, ...] = (),
            files: list[FileStamp] | None = None) -> Stamp:
    """Move the finished `tmp` to `out` (replacing what was there) and stamp it; the caller holds `locked(out)`.

    `files`: stamps already taken in `tmp` (renaming the folder keeps its files' size, times and inodes), so nothing
    is hashed twice.
    """
    out = Path(out)
    stamp_path(out).unlink(missing_ok=True)  # no stamp: whatever is at `out` is not trusted meanwhile
    if out.exists():
        remove(out)
    Path(tmp).replace(out)
    stamp = Stamp(files=files if files is not None else stamp_dir(out, exclude), exclude=list(exclude),
                  result=result.model_dump(mode="json"))
    write_whole(stamp_path(out), stamp.model_dump_json())
    return stamp


def stamp(out: Path, result: BaseModel) -> Stamp:
    """Stamp an artifact made in place (the caller holds `locked(out)` and removed any earlier stamp first)."""
    made = Stamp(files=stamp_dir(out), result=result.model_dump(mode="json"))
    write_whole(stamp_path(out), made.model_dump_json())
    return made


def read_stamp(out: Path) -> Stamp | None:
    try:
        return Stamp.model_validate_json(stamp_path(out).read_text())
    except (OSError, ValueError):
        return None


def problems(out: Path, result: BaseModel | None = None, full: bool = False, fields: set[str] | None = None) -> list[str]:
    """Why `out` is not the artifact recorded in its stamp (and, given `result`, not the one `result` describes: all
    of it, or only its `fields`)."""
    stamp = read_stamp(out)
    if stamp is None:
        return [f"{out} has no stamp (never finished, or made before stamps)"]
    if result is not None:
        recorded, described = stamp.result, result.model_dump(mode="json")
        if fields is not None:
            recorded, described = ({k: d.get(k) for k in fields} for d in (recorded, described))
        if recorded != described:
            return [f"{out} now holds another artifact than the cached result describes"]
    return check_stamps(out, stamp.files, full=full, exclude=tuple(stamp.exclude))


def reuse(out: Path, cls: type[R], full: bool = False) -> R | None:
    """The result of an artifact already made whole at `out` (by another run, while this one waited), else None."""
    if problems(out, full=full):
        return None
    return cls.model_validate(read_stamp(out).result)
