"""The trading-bot flow and the account lease: a held lease fails the run at once; a lost one ends it stood down."""

from __future__ import annotations

import contextvars
import json
import threading
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.states import State

from flows.bot import trading_bot
from tests.deployments.test_cli import crossing_start
from tests.flows.conftest import NOT_INHERITED, paper_bot_settings, set_variable
from trader.ledger import Ledger
from trader.ledger.lease import Holder

pytestmark = pytest.mark.e2e


@pytest.fixture
def paper_env(prefect_server: dict[str, str], sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The flow called in this process, on a SQLite ledger and a temp STATE_DIR; returns the ledger URL."""
    for name, value in paper_bot_settings(sqlite_url, tmp_path).items():
        monkeypatch.setenv(name, value)
    for name in NOT_INHERITED:
        monkeypatch.delenv(name, raising=False)
    return sqlite_url


def test_a_held_lease_fails_the_run_with_one_line_naming_the_holder_and_is_not_retried(paper_env: str) -> None:
    ledger = Ledger(paper_env)
    holder = Holder("bot", "other-host", 4242, flow_run_url="http://127.0.0.1:4200/runs/flow-run/other")
    ledger.acquire_lease("default", holder, 60)

    state: State = trading_bot(profile="dev", max_cycles=3, cycle_interval_seconds=0, return_state=True)

    assert state.type is StateType.FAILED
    message = state.message or ""
    assert "\n" not in message and "other-host" in message and "pid 4242" in message
    assert "runs/flow-run/other" in message
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert tasks == []  # refused before any task: no reconcile, no recovery, nothing retried
    assert ledger.list_orders() == [] and ledger.find_session_by_flow_run(str(state.state_details.flow_run_id)) is None
    assert state.name == "LeaseHeld" and ledger.open_incidents() == []  # the holder trades: no "bot offline"


def test_a_bot_whose_lease_an_operator_took_stands_down_and_the_run_completes_saying_who_holds_it(
    paper_env: str,
) -> None:
    ledger = Ledger(paper_env)
    states: list[State] = []
    context = contextvars.copy_context()  # the test server's Prefect settings (a bare thread would start its own)
    runner = threading.Thread(
        target=lambda: states.append(
            context.run(
                trading_bot, profile="dev", cycle_interval_seconds=0.2, return_state=True
            )  # until it stands down
        ),
        daemon=True,
    )
    runner.start()
    deadline = time.monotonic() + 60
    while (lease := ledger.current_lease("default")) is None or lease.holder.kind != "bot":
        assert time.monotonic() < deadline and runner.is_alive(), "the bot never took the lease"
        time.sleep(0.1)

    ledger.override_lease("default", Holder("operator", "ops-host", 7), 60, "kill-switch on")
    runner.join(60)

    assert not runner.is_alive() and states, "the bot did not stand down"
    state = states[0]
    assert state.type is StateType.COMPLETED
    assert (state.message or "").startswith("stood down after ") and "operator on host ops-host pid 7" in (
        state.message or ""
    )
    session = ledger.find_session_by_flow_run(str(state.state_details.flow_run_id))
    assert session is not None and session.status == "stood_down"


def test_a_kill_switch_set_only_as_a_variable_holds_from_the_first_cycle(
    paper_env: str, clean_variables: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARKET_DATA_START", str(crossing_start() - 1))  # the strategy buys in the very first cycle
    set_variable("kill_switch", True)  # e.g. by emergency-kill-switch on another machine: no flag file here

    state: State = trading_bot(profile="dev", max_cycles=40, cycle_interval_seconds=0, return_state=True)

    assert state.type is StateType.COMPLETED
    heartbeat = json.loads((tmp_path / "state/heartbeat.json").read_text())
    assert heartbeat["guard_counters"].get("kill_switch", 0) > 0  # the strategy wanted to trade and was refused
    assert Ledger(paper_env).list_orders() == []
