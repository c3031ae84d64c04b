"""Flow runs whose quantflow process is gone: recorded while they run, marked CRASHED by the next command.

A `quantflow run` killed outright (SIGKILL, the OOM killer, a closed laptop lid that never came back) cannot report its
own end, and its temporary Prefect server dies with it (components/tether.py), so the zombie automation
(components/automations.py) never sees the missing heartbeats: the flow run would stay RUNNING in the database under
PREFECT_HOME forever. So each command that runs flows keeps a ledger, `$QUANTFLOW_HOME/runs/<pid>-<random>.json`,
holding the API it reports to and the ids of the flow runs it started, and holds an exclusive `flock` on it while it
lives. The kernel drops the lock when the process dies, however it dies; a later command that can take the lock knows
the owner is gone (a pid could be reused, a lock cannot outlive its process), marks the ledger's flow runs that are
not final, with their subflows and unfinished task runs, CRASHED, and removes the ledger.
"""
from __future__ import annotations

import fcntl
import json
import os
import uuid
from pathlib import Path

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


class Ledger:
    """This process's ledger, locked until `close()` or the process's end."""

    def __init__(self, folder: Path, api: str):
        self.api, self.flow_runs = api, []
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        tmp = self.path.with_suffix(".tmp")
        self._fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # before the name appears: a reader never finds it unlocked
        self._write()
        os.rename(tmp, self.path)

    def _write(self) -> None:
        data = json.dumps({"api": self.api, "pid": os.getpid(), "flow_runs": self.flow_runs}).encode()
        os.pwrite(self._fd, data, 0)  # it only grows: no moment without a whole ledger in it
        os.ftruncate(self._fd, len(data))

    def add(self, flow_run_id: str) -> None:
        if flow_run_id not in self.flow_runs:
            self.flow_runs.append(flow_run_id)
            self._write()

    def close(self) -> None:
        """Done with (the run ended, or its end was recorded): the ledger goes. Twice is once."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(fd)


def abandoned(folder: Path, api: str) -> list[tuple[Path, dict, int]]:
    """Ledgers for `api` whose process is gone: (path, contents, locked fd: the caller removes the file, then closes).
    A ledger its process never finished creating is removed here."""
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process lives
            os.close(fd)
            continue
        try:
            data = json.loads(os.pread(fd, 1 << 20, 0)) if path.suffix == ".json" else {}
        except ValueError:
            data = {}
        if not data:
            path.unlink(missing_ok=True)
            os.close(fd)
        elif data.get("api") != api:  # another server's: the next command that reports there
            os.close(fd)
        else:
            found.append((path, data, fd))
    return found


def crash(flow_run_ids: list[str], message: str, timeout: float = 5) -> list:
    """Mark the flow runs that are not final, their subflows and their unfinished task runs CRASHED (PREFECT_API_URL);
    returns the flow runs it marked."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId,
                                                FlowRunFilterState, FlowRunFilterStateType, TaskRunFilter,
                                                TaskRunFilterState, TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    if not flow_run_ids:
        return []
    open_types = [t for t in StateType if t.value not in FINAL]
    marked = []
    with get_client(sync_client=True, httpx_settings={"timeout": timeout}) as client:
        ids = [UUID(i) for i in flow_run_ids]
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=ids), state=FlowRunFilterState(type=FlowRunFilterStateType(any_=open_types))))
        runs += client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=ids),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=open_types))))
        if not runs:
            return []
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=open_types))))
        for t in tasks:
            client.set_task_run_state(t.id, Crashed(message=message), force=True)
        for r in runs:
            client.set_flow_run_state(r.id, Crashed(message=message), force=True)
            marked.append(r)
    return marked


def reap(folder: Path, api: str) -> list[str]:
    """Mark what killed commands left running on `api` CRASHED and forget their ledgers; one line per flow run."""
    lines = []
    for path, data, fd in abandoned(folder, api):
        try:
            pid = data.get("pid", "?")
            for r in crash(data.get("flow_runs", []), f"the quantflow process that ran it (pid {pid}) is gone: "
                                                      "killed before it could report (rerun the same command to resume)"):
                lines.append(f"flow run {r.name!r} ({r.id}) was left {r.state_name or 'unfinished'} by a quantflow "
                             f"process that is gone (pid {pid}): marked Crashed")
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return lines
