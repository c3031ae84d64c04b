"""The Prefect automation every quantflow server gets: a flow run whose heartbeats stop is marked CRASHED.

A killed flow-run process (SIGKILL, OOM, a lost node or pod) cannot report its own end, so without this its run stays
RUNNING forever. Flow runs send `prefect.flow-run.heartbeat` events every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds
(180 by default in Prefect 3.8); a proactive trigger fires when neither a heartbeat nor a terminal state follows one
within `within` seconds. Installed by `quantflow server up`, `quantflow deploy` and `quantflow server automations`.
"""
from __future__ import annotations

ZOMBIE = "quantflow-crash-zombie-flow-runs"
TERMINAL = ("prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed")


def zombie_automation(heartbeat_s: int, within: float | None = None, match: dict | None = None, name: str = ZOMBIE):
    """The automation: by default server-wide (every flow run), `within` three heartbeats and a minute."""
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    within = within if within is not None else 3 * heartbeat_s + 60
    return AutomationCore(
        name=name, description="quantflow: a flow run whose heartbeats stopped is gone; mark it CRASHED",
        trigger=EventTrigger(after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.heartbeat", *TERMINAL},
                             match=match or {"prefect.resource.id": "prefect.flow-run.*"},
                             for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1, within=within),
        actions=[ChangeFlowRunState(state="CRASHED", message=f"no heartbeat for {within:g} s: the flow-run process is gone")])


def _same(existing, wanted) -> bool:
    """Same trigger (its generated id aside), actions, state and description."""
    def norm(a) -> dict:
        trigger = a.trigger.model_dump(mode="json", exclude={"id"})
        trigger = {k: sorted(v) if isinstance(v, list) else v for k, v in trigger.items()}  # sets come back in any order
        return {"trigger": trigger, "actions": a.model_dump(mode="json")["actions"], "enabled": a.enabled,
                "description": a.description}

    return norm(existing) == norm(wanted)


def ensure_zombie_automation(heartbeat_s: int | None = None) -> str:
    """Create, update or keep the automation on PREFECT_API_URL's server (one, by name): 'created', 'updated' or 'unchanged'."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    wanted = zombie_automation(heartbeat_s or get_current_settings().flows.heartbeat_frequency)
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(ZOMBIE)
        if not existing:
            client.create_automation(wanted)
            return "created"
        keep, *extra = existing
        for automation in extra:  # two installers racing: one is enough
            client.delete_automation(automation.id)
        if _same(keep, wanted):
            return "unchanged"
        client.update_automation(keep.id, wanted)
        return "updated"
