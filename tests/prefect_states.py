"""Read task-run states of a flow run from the Prefect server (what the UI shows)."""
from __future__ import annotations


def task_states(flow_run_id) -> dict[str, list[str]]:
    """Task name (without its run suffix) -> state names, e.g. {"evaluate": ["Cached", "Completed"]}."""
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    out: dict[str, list[str]] = {}
    for r in anyio.run(go):
        out.setdefault(r.name.rsplit("-", 1)[0], []).append(r.state.name)
    return out
