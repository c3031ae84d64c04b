"""Read task-run states of a flow run from the Prefect server (what the UI shows)."""
from __future__ import annotations

import time


def _read(flow_run_id) -> list[tuple[str, str, bool]]:
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    # task_key is `<function>-<code hash>`; run names say what a run does ("evaluate base")
    return sorted((r.task_key, r.state.name, r.state.is_final()) for r in anyio.run(go))


def task_states(flow_run_id, final: bool = True, settle_s: float = 60) -> dict[str, list[str]]:
    """Task function name -> its runs' state names, e.g. {"evaluate": ["Cached", "Completed"]}.

    Task-run states reach the server as events, after the flow returns; under load they lag. Read until two reads a
    second apart agree and, for a finished flow run (`final`), every task run is final (at most `settle_s`), so a test
    sees what the UI will show. A killed run's tasks stay as they were: pass final=False.
    """
    deadline = time.time() + settle_s
    runs = _read(flow_run_id)
    while time.time() < deadline:
        time.sleep(1)
        again = _read(flow_run_id)
        if again == runs and (not final or all(done for _, _, done in runs)):
            break
        runs = again
    out: dict[str, list[str]] = {}
    for name, state, _ in runs:
        out.setdefault(name.rsplit("-", 1)[0], []).append(state)
    return out


def task_spans(flow_run_id, settle_s: float = 60) -> dict:
    """Task-run name ("evaluate base") -> (start, end) as the server recorded them, once every run has both."""
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    deadline = time.time() + settle_s
    runs = anyio.run(go)
    while time.time() < deadline and not all(r.start_time and r.end_time for r in runs):
        time.sleep(1)
        runs = anyio.run(go)
    return {r.name: (r.start_time, r.end_time) for r in runs}
