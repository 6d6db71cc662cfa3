"""Supervised restarts end to end: the bot served on a real Prefect server, the automations of
deployments/automations.py, 5 SIGKILLs of the bot's flow-run process in a row, then a cancel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelling

from deployments.automations import (
    BOT_HEARTBEAT_SECONDS,
    RESTART_AUTOMATION_NAME,
    ZOMBIE_AUTOMATION_NAME,
    ensure_supervision_automations,
)
from tests.restarts import restarts_of
from trader.drills.coherence import compare, paper_exchange_truth
from trader.ledger import Ledger
from trader.supervision import restarts_fingerprint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

KILLS = 5
ACCOUNT = "default"


@pytest.fixture
def bot_env(bot_env: dict[str, str], fresh_pg_url: str) -> dict[str, str]:
    """A ledger of its own (positions are compared with this test's paper exchange), no exporter port to share."""
    return {
        **bot_env,
        "DATABASE_URL": fresh_pg_url,
        "METRICS_ENABLED": "0",
        "ACCOUNT": ACCOUNT,
        "RESTART_BACKOFF_MAX_SECONDS": "4",  # the crash loop's backoff: 2, 4, 4, 4, 4 s (30 s cap: 60 s of waiting)
    }


@pytest.fixture
def automations(prefect_server: dict[str, str]) -> Iterator[dict[str, UUID]]:
    """The zombie and restart automations, created twice (idempotent) and deleted after the test (shared server)."""
    env = {k: v for k, v in prefect_server.items() if not k.startswith("SLACK_")}
    created = subprocess.run(
        [sys.executable, "-m", "deployments.automations"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # what `perps-bot up` runs; without Slack it still creates both
    assert created.returncode == 0, created.stderr
    assert ZOMBIE_AUTOMATION_NAME in created.stdout and RESTART_AUTOMATION_NAME in created.stdout
    ids = ensure_supervision_automations()
    yield ids
    with get_client(sync_client=True) as client:
        for automation_id in ids.values():
            client.delete_automation(automation_id)


def restart_of(deployment_id: UUID, crashed: UUID, timeout: float, copies: list[UUID] | None = None) -> FlowRun | None:
    """The run the restart automation started for `crashed` (the first created), or None when none appears within
    timeout; copies started for the same Crashed event are added to `copies`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = restarts_of(deployment_id, crashed)
        if found:
            if copies is not None:
                copies.extend(r.id for r in found[1:] if r.id not in copies)
            return found[0]
        time.sleep(0.5)
    return None


def wait_trading(ledger: Ledger, run_id: UUID, cycles: int = 3, timeout: float = 150) -> int:
    """Poll until the run's trading session has done `cycles` cycles and it holds the lease; its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = ledger.find_session_by_flow_run(str(run_id))
        lease = ledger.current_lease(ACCOUNT)
        if session and session.cycles >= cycles and lease and lease.holder.flow_run_id == str(run_id):
            return lease.holder.pid
        time.sleep(0.3)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    raise AssertionError(
        f"flow run {run_id} did not trade {cycles} cycles within {timeout} s: state {state}, session {session}, "
        f"lease {lease.describe() if lease else None}"
    )


def wait_state(run_id: UUID, wanted: set[StateType], timeout: float = 90) -> StateType:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            if state is not None and state.type in wanted:
                return state.type
            time.sleep(0.3)
    raise AssertionError(f"flow run {run_id} never reached {wanted} (last: {state})")


def test_five_sigkills_in_a_row_each_restart_trades_and_the_ledger_matches_the_exchange(
    served_deployments: dict[str, str], automations: dict[str, UUID]
) -> None:
    assert set(automations) == {ZOMBIE_AUTOMATION_NAME, RESTART_AUTOMATION_NAME}
    with get_client(sync_client=True) as client:  # created twice by the fixture, present once
        assert [len(client.read_automations_by_name(name)) for name in automations] == [1, 1]
    parameters = {"profile": "dev", "cycle_interval_seconds": 0.2}
    run = run_deployment("trading-bot/paper", parameters=parameters, timeout=0)
    deployment_id = run.deployment_id
    assert deployment_id is not None
    ledger = Ledger(served_deployments["DATABASE_URL"])
    killed: list[UUID] = []
    copies: list[UUID] = []  # runs started a second time for one Crashed event: Prefect's, and one made here
    try:
        for kill in range(KILLS):
            pid = wait_trading(ledger, run.id)
            if kill == 0:  # the runner hands the bot's flow-run process the heartbeat the zombie automation expects
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                assert f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={BOT_HEARTBEAT_SECONDS}".encode() in environ
            os.kill(pid, signal.SIGKILL)  # the flow-run process that holds the lease, nothing else
            killed.append(run.id)
            assert (
                wait_state(run.id, {StateType.CRASHED, StateType.COMPLETED, StateType.CANCELLED}) is StateType.CRASHED
            )
            new = restart_of(deployment_id, run.id, timeout=60, copies=copies)
            assert new is not None, f"no restart of crashed run {run.id}"
            assert {k: new.parameters[k] for k in parameters} == parameters  # the same parameters
            run = new

        wait_trading(ledger, run.id)  # the fifth restart trades too
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(), force=True)
        assert wait_state(run.id, {StateType.CANCELLED, StateType.CRASHED, StateType.COMPLETED}) is StateType.CANCELLED
        # the last restart's run once more, as an at-least-once delivery of its Crashed event does (now, while the
        # deployment's slot is free: a copy queued behind a trading run waits for it)
        made = run_deployment("trading-bot/paper", parameters=run.parameters, timeout=0)
        copies.append(made.id)
        assert restart_of(deployment_id, run.id, timeout=15) is None, "a cancelled run was restarted"
        for crashed in killed:  # copies that appeared after their restart was found
            restart_of(deployment_id, crashed, timeout=1, copies=copies)
        for copy in copies:  # each stands down once it gets the deployment's slot, and never trades
            assert wait_state(copy, {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED}) is StateType.COMPLETED
            assert ledger.find_session_by_flow_run(str(copy)) is None
        with get_client(sync_client=True) as client:
            message = client.read_flow_run(made.id).state.message  # type: ignore[union-attr]
        assert message is not None and "already restarted by run" in message, message

        sessions = [ledger.find_session_by_flow_run(str(r)) for r in [*killed, run.id]]
        assert all(s is not None and s.cycles >= 3 for s in sessions)
        assert [s.status for s in sessions if s is not None][-1] == "stopped"
        assert not [s for s in ledger.list_sessions() if s.status == "running"], "a killed session was not recovered"
        report = compare(ledger, paper_exchange_truth(Path(served_deployments["STATE_DIR"]) / "paper_exchange.json"))
        assert report.match, report.summary()  # every order and fill exactly once, positions equal
        assert report.ledger_orders > 0 and report.ledger_fills > 0
        (incident,) = [i for i in ledger.open_incidents() if i.fingerprint == restarts_fingerprint(ACCOUNT)]
        assert incident.severity == "SEV-1"
        assert incident.detail.count("\n- ") == KILLS  # one update per restart
    finally:
        ledger.dispose()


def test_a_crashed_state_set_after_a_cancel_is_not_restarted_into_trading(
    served_deployments: dict[str, str], automations: dict[str, UUID]
) -> None:
    """PrefectHQ/prefect#18653: a final run flipped to Crashed later; the automation fires, the policy refuses."""
    from prefect.states import Crashed

    run = run_deployment("trading-bot/paper", parameters={"profile": "dev", "cycle_interval_seconds": 0.2}, timeout=0)
    ledger = Ledger(served_deployments["DATABASE_URL"])
    try:
        wait_trading(ledger, run.id)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(), force=True)
            assert wait_state(run.id, {StateType.CANCELLED}) is StateType.CANCELLED
            client.set_flow_run_state(run.id, Crashed(message="late heartbeat"), force=True)
        assert run.deployment_id is not None
        new = restart_of(run.deployment_id, run.id, timeout=60)
        assert new is not None  # the automation fired ...
        assert wait_state(new.id, {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED}) is StateType.COMPLETED
        assert ledger.find_session_by_flow_run(str(new.id)) is None  # ... and the new run never traded
        assert not [i for i in ledger.open_incidents() if i.fingerprint == restarts_fingerprint(ACCOUNT)]
    finally:
        ledger.dispose()


def test_a_live_run_marked_crashed_is_set_back_to_running_trades_on_alone_and_can_still_be_cancelled(
    served_deployments: dict[str, str], automations: dict[str, UUID]
) -> None:
    """The zombie automation after an API outage, or a freed concurrency slot: Crashed, while the bot still trades."""
    from prefect.states import Crashed

    run = run_deployment("trading-bot/paper", parameters={"profile": "dev", "cycle_interval_seconds": 0.2}, timeout=0)
    ledger = Ledger(served_deployments["DATABASE_URL"])
    try:
        pid = wait_trading(ledger, run.id)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Crashed(message="no heartbeat (false)"), force=True)
        assert run.deployment_id is not None
        new = restart_of(run.deployment_id, run.id, timeout=60)
        assert new is not None
        assert wait_state(new.id, {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED}) is StateType.COMPLETED
        assert ledger.find_session_by_flow_run(str(new.id)) is None  # the new run never traded
        assert wait_state(run.id, {StateType.RUNNING}, timeout=30) is StateType.RUNNING  # revived
        lease = ledger.current_lease(ACCOUNT)
        assert lease is not None and lease.holder.pid == pid and not lease.expired()  # still the one bot trading
        with get_client(sync_client=True) as client:  # and an operator's cancel reaches it again
            client.set_flow_run_state(run.id, Cancelling(), force=True)
        assert wait_state(run.id, {StateType.CANCELLED, StateType.CRASHED, StateType.COMPLETED}) is StateType.CANCELLED
    finally:
        ledger.dispose()
