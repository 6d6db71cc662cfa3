"""The runs the restart automation started for a crashed trading-bot run, as the supervision tests read them."""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun


def bot_runs(deployment_id: UUID) -> list[FlowRun]:
    """The deployment's runs (at most 200), as the restart policy reads them."""
    from prefect_adapter.runs import deployment_runs

    return deployment_runs(deployment_id, limit=200)


def run_events(run_id: UUID) -> str:
    """The server's events about a run (states, heartbeats, automation firings), one line each: a failure's story."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        events = client.request(
            "POST",
            "/events/filter",
            json={"filter": {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50},
        ).json()["events"]
    lines = [f"{e['occurred']} {e['event']} {e['id']} resource={e['resource']['prefect.resource.id']}" for e in events]
    return "\n".join(sorted(lines))


def restarts_of(deployment_id: UUID, crashed: UUID) -> list[FlowRun]:
    """The runs started for `crashed`, the first created first. Prefect delivers an event at least once, so one
    Crashed event may start copies (the same restart_event; they must stand down); runs for two different Crashed
    events of one run, or without the event's id, fail here."""
    found = sorted(
        (r for r in bot_runs(deployment_id) if r.parameters.get("restart_of") == str(crashed)),
        key=lambda r: (r.created, str(r.id)),
    )
    events = {r.parameters.get("restart_event") for r in found}
    assert len(events) <= 1 and None not in events, f"restarts of {crashed} for {events}\n{run_events(crashed)}"
    return found
