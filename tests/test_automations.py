"""The zombie automation on the real Prefect server: installed once, kept in step with the heartbeat, never doubled.
Its effect (a SIGKILLed flow run marked CRASHED) is drilled in tests/test_faults.py (drill f2)."""
from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client

from components.automations import ZOMBIE, ensure_zombie_automation, zombie_automation


@pytest.fixture
def clean_server():
    def delete_all():
        with get_client(sync_client=True) as client:
            for a in client.read_automations_by_name(ZOMBIE):
                client.delete_automation(a.id)

    delete_all()
    yield
    delete_all()  # the server is shared with the session's other tests


def _installed():
    with get_client(sync_client=True) as client:
        return client.read_automations_by_name(ZOMBIE)


def test_installed_once_and_updated_in_place(clean_server):
    assert ensure_zombie_automation(180) == "created"
    assert ensure_zombie_automation(180) == "unchanged"
    [first] = _installed()
    assert first.trigger.within.total_seconds() == 600 and first.trigger.posture.value == "Proactive"
    assert first.trigger.match.model_dump() == {"prefect.resource.id": "prefect.flow-run.*"}
    assert [a.type for a in first.actions] == ["change-flow-run-state"] and first.actions[0].state.value == "CRASHED"

    assert ensure_zombie_automation(60) == "updated"  # a faster heartbeat: the same automation, a shorter wait
    [again] = _installed()
    assert again.id == first.id and again.trigger.within.total_seconds() == 240


def test_duplicates_from_racing_installers_are_removed(clean_server):
    with get_client(sync_client=True) as client:
        client.create_automation(zombie_automation(180))
        client.create_automation(zombie_automation(180))
    assert len(_installed()) == 2
    assert ensure_zombie_automation(180) == "unchanged"
    assert len(_installed()) == 1
