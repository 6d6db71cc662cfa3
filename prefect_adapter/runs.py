"""Flow runs as Prefect sees them: this run's id, a run's page in the UI, a crashed run's history, a revived run, a
deployment's runs, the first restart of a crash, and an account's bot runs stopped by a graceful shutdown."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from trader.shutdown.results import FINAL_RUN_STATES, RunStopped

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

# The newest runs of a deployment searched for copies of a restart: copies are created within seconds of each other.
RECENT_RUNS = 200


def current_flow_run_id() -> str | None:
    """The id of the flow run this code runs in, or None outside a flow run."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


def flow_run_url(flow_run_id: object) -> str | None:
    """The flow run's page in the Prefect UI (PREFECT_UI_URL/runs/flow-run/<id>), or None without a UI URL."""
    if not flow_run_id:
        return None
    try:
        from prefect.settings import PREFECT_UI_URL

        ui = PREFECT_UI_URL.value()
    except Exception:
        return None
    return f"{str(ui).rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


@dataclass(frozen=True)
class FlowRunHistory:
    """What the API knows about a finished run: its state types in order, when it started, ended and crashed."""

    state_types: tuple[str, ...]
    started_at: datetime | None
    ended_at: datetime | None
    crashed_at: datetime | None
    state_message: str | None


def flow_run_history(flow_run_id: str) -> FlowRunHistory:
    """The run's state history (oldest first) and its timestamps, read in one client session."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        states = sorted(client.read_flow_run_states(UUID(flow_run_id)), key=lambda state: state.timestamp)
    return FlowRunHistory(
        state_types=tuple(state.type.value for state in states),
        started_at=run.start_time,
        ended_at=run.end_time,
        crashed_at=run.state.timestamp if run.state is not None else None,
        state_message=run.state.message if run.state is not None else None,
    )


def set_flow_run_running(flow_run_id: str, message: str) -> None:
    """Force the run's state back to Running (raises what the API raises)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(flow_run_id), Running(message=message), force=True)


def deployment_runs(deployment_id: UUID, limit: int = RECENT_RUNS) -> list[FlowRun]:
    """The deployment's runs, the latest expected start first (a restart is scheduled for the moment it is created)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )


def first_restart(this_run: str, restart_of: str, restart_event: str) -> str | None:
    """The id of the first-created run of this_run's deployment started for the Crashed event `restart_event` of run
    `restart_of`, None when this_run belongs to no deployment. Prefect delivers events at least once: two runs for
    one event are one restart and a copy, and every copy finds the same first run here."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment_id = client.read_flow_run(UUID(this_run)).deployment_id
    if deployment_id is None:
        return None
    wanted = {"restart_of": restart_of, "restart_event": restart_event}
    runs = deployment_runs(deployment_id)
    started = [run for run in runs if all(run.parameters.get(key) == value for key, value in wanted.items())]
    if not started:
        return this_run
    first = min(started, key=lambda run: (run.created or datetime.max.replace(tzinfo=UTC), str(run.id)))
    return str(first.id)


# --- a graceful shutdown's stop of the account's bot runs ------------------------------------------------------------

BOT_FLOW_NAME = "trading-bot"
LIVE_STATE_TYPES = ("SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED")


class PrefectBotRuns:
    """The account's trading-bot runs, cancelled as the UI's Cancel does: a run that is running gets Cancelling (its
    bot stops between cycles and the run ends Cancelled), one that never started goes straight to Cancelled. The
    restart automation only ever answers Crashed, and the restart policy skips a run ever Cancelling or Cancelled
    (trader/supervision.py): an operator's stop, never undone. trader.shutdown.procedure.BotRuns for Prefect.

    unnamed_runs: runs without an `account` parameter belong to the account too (trading-bot/paper: no accounts
    file, the environment's one account)."""

    def __init__(self, *, unnamed_runs: bool, poll_seconds: float = 0.5) -> None:
        self.unnamed_runs = unnamed_runs
        self.poll_seconds = poll_seconds

    def stop(self, account: str, run_ids: Collection[str], wait_seconds: float) -> list[RunStopped]:
        """Cancel the account's live trading-bot runs and the runs named; wait for each to be final."""
        import time

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowFilter,
            FlowFilterName,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.states import Cancelled, Cancelling

        live = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(t) for t in LIVE_STATE_TYPES]))
        )
        message = f"graceful shutdown of account {account}: an operator's stop (not restarted)"
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[BOT_FLOW_NAME])), flow_run_filter=live, limit=200
            )
            wanted = [str(run.id) for run in runs if self._of_account(run.parameters, account)]
            wanted += [run_id for run_id in run_ids if run_id not in wanted]
            before: dict[str, str] = {}
            for run_id in wanted:
                run = client.read_flow_run(UUID(run_id))
                state = run.state.type.value if run.state is not None else "UNKNOWN"
                before[run_id] = state
                if state in FINAL_RUN_STATES:
                    continue
                # Only a running process can act on Cancelling; a run that never started goes straight to Cancelled.
                target = Cancelling if state in ("RUNNING", "CANCELLING") else Cancelled
                client.set_flow_run_state(UUID(run_id), target(message=message), force=True)
            after = dict(before)
            deadline = time.monotonic() + wait_seconds
            while True:
                for run_id in [r for r, state in after.items() if state not in FINAL_RUN_STATES]:
                    run = client.read_flow_run(UUID(run_id))
                    after[run_id] = run.state.type.value if run.state is not None else "UNKNOWN"
                if all(state in FINAL_RUN_STATES for state in after.values()) or time.monotonic() >= deadline:
                    break
                time.sleep(self.poll_seconds)
        return [RunStopped(run_id, before[run_id], after[run_id]) for run_id in wanted]

    def _of_account(self, parameters: dict[str, Any] | None, account: str) -> bool:
        named = (parameters or {}).get("account")
        return named == account or (self.unnamed_runs and not named)
