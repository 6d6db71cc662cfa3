"""The restart policy as a task: what Prefect knows about the crashed run, handed to trader/supervision.py.

No retries: deciding writes the restart (or the refusal) into the SEV-1 incident's thread, and a second attempt
would count the same restart twice.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task

from prefect_adapter.runs import (
    current_flow_run_id,
    first_restart,
    flow_run_history,
    flow_run_url,
    set_flow_run_running,
)
from tasks.policies import RESTART_DECISION
from trader.settings import Settings
from trader.supervision import CrashedRun, RestartDecision, RestartPolicy, RestartSupervisor, decide


def crashed_run_facts(flow_run_id: str, supervisor: RestartSupervisor, settings: Settings) -> CrashedRun:
    """The crashed run's state history, how long it ran and its trading session's status."""
    history = flow_run_history(flow_run_id)
    crashed_at = history.crashed_at
    ended = history.ended_at or crashed_at or datetime.now(UTC)
    ran = (ended - history.started_at).total_seconds() if history.started_at is not None else 0.0
    return CrashedRun(
        flow_run_id=flow_run_id,
        state_history=history.state_types,
        ran_seconds=max(ran, 0.0),
        session_status=supervisor.session_status(flow_run_id),
        state_message=history.state_message,
        holder_alive=supervisor.holder_alive(
            flow_run_id, crashed_at or datetime.now(UTC), wait_seconds=settings.lease_ttl_seconds / 3 + 2
        ),
        other_holder=supervisor.other_holder(flow_run_id),
    )


def _revive(flow_run_id: str, logger: Any) -> None:
    """A run marked Crashed while its process still trades (the zombie automation after an API outage) is set back
    to Running: left Crashed, Prefect would refuse its later real Crashed (no event, so no restart) and its cancel."""
    try:
        set_flow_run_running(flow_run_id, "still trading: its process renews the lease")
        logger.warning("flow run %s was marked Crashed but still trades: set back to Running", flow_run_id)
    except Exception as error:  # the run trades on either way; say so, so an operator can look
        logger.error("flow run %s still trades but stays marked Crashed (%s): cancel it by hand", flow_run_id, error)


def copy_of_restart(restart_of: str, restart_event: str | None) -> CrashedRun | None:
    """The crashed run as a copy of its restart sees it, when another run was started first for the same Crashed
    event; None for the restart itself (and for runs started without the event's id)."""
    this = current_flow_run_id()
    if restart_event is None or this is None:
        return None
    first = first_restart(this, restart_of, restart_event)
    if first is None or first == this:
        return None
    return CrashedRun(flow_run_id=restart_of, restarted_by=first)


@task(name="restart-policy", **RESTART_DECISION.options())
def apply_restart_policy(settings: Settings, restart_of: str, restart_event: str | None = None) -> RestartDecision:
    """Decide whether this run (started by the restart automation) trades; wait out the backoff if it does.
    A copy of a restart (one Crashed event delivered twice) stands down before it looks at anything else."""
    logger = get_run_logger()
    copy = copy_of_restart(restart_of, restart_event)
    if copy is not None:
        decision = decide(RestartPolicy.from_settings(settings), copy, [])
        logger.warning("restart policy: %s", decision.reason)
        return decision
    with RestartSupervisor.opened(settings) as supervisor:
        crashed = crashed_run_facts(restart_of, supervisor, settings)
        new_run = current_flow_run_id()
        decision = supervisor.decide_and_record(crashed, new_run_id=new_run, new_run_url=flow_run_url(new_run))
    logger.info("restart policy: %s", decision.reason)
    if crashed.holder_alive and not decision.restart:
        _revive(restart_of, logger)
    if decision.restart and decision.delay_seconds > 0:
        time.sleep(decision.delay_seconds)  # the backoff itself: nothing to poll for
    return decision
