"""The restart policy as a task: what Prefect knows about the crashed run, handed to trader/supervision.py.

No retries: deciding writes the restart (or the refusal) into the SEV-1 incident's thread, and a second attempt
would count the same restart twice.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Running

from trader.settings import Settings
from trader.supervision import CrashedRun, RestartDecision, RestartPolicy, RestartSupervisor


def _ui_url(flow_run_id: str) -> str | None:
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    return f"{str(ui).rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


def crashed_run_facts(flow_run_id: str, supervisor: RestartSupervisor, settings: Settings) -> CrashedRun:
    """The crashed run's state history, how long it ran and its trading session's status."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        states = sorted(client.read_flow_run_states(UUID(flow_run_id)), key=lambda state: state.timestamp)
    crashed_at = run.state.timestamp if run.state is not None else None
    ended = run.end_time or crashed_at or datetime.now(UTC)
    ran = (ended - run.start_time).total_seconds() if run.start_time is not None else 0.0
    return CrashedRun(
        flow_run_id=flow_run_id,
        state_history=tuple(state.type.value for state in states),
        ran_seconds=max(ran, 0.0),
        session_status=supervisor.session_status(flow_run_id),
        state_message=run.state.message if run.state is not None else None,
        holder_alive=supervisor.holder_alive(
            flow_run_id, crashed_at or datetime.now(UTC), wait_seconds=settings.lease_ttl_seconds / 3 + 2
        ),
        other_holder=supervisor.other_holder(flow_run_id),
    )


def _revive(flow_run_id: str, logger: Any) -> None:
    """A run marked Crashed while its process still trades (the zombie automation after an API outage) is set back
    to Running: left Crashed, Prefect would refuse its later real Crashed (no event, so no restart) and its cancel."""
    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                UUID(flow_run_id), Running(message="still trading: its process renews the lease"), force=True
            )
        logger.warning("flow run %s was marked Crashed but still trades: set back to Running", flow_run_id)
    except Exception as error:  # the run trades on either way; say so, so an operator can look
        logger.error("flow run %s still trades but stays marked Crashed (%s): cancel it by hand", flow_run_id, error)


@task(name="restart-policy", retries=0, timeout_seconds=RestartPolicy.max_delay_seconds + 120, cache_policy=NO_CACHE)
def apply_restart_policy(settings: Settings, restart_of: str) -> RestartDecision:
    """Decide whether this run (started by the restart automation) trades; wait out the backoff if it does."""
    logger = get_run_logger()
    supervisor = RestartSupervisor.from_settings(settings)
    try:
        crashed = crashed_run_facts(restart_of, supervisor, settings)
        new_run = str(flow_run.get_id()) if flow_run.get_id() else None
        decision = supervisor.decide_and_record(
            crashed, new_run_id=new_run, new_run_url=_ui_url(new_run) if new_run else None
        )
    finally:
        supervisor.ledger.dispose()
    logger.info("restart policy: %s", decision.reason)
    if crashed.holder_alive and not decision.restart:
        _revive(restart_of, logger)
    if decision.restart and decision.delay_seconds > 0:
        time.sleep(decision.delay_seconds)  # the backoff itself: nothing to poll for
    return decision
