"""A runner serving prefect.yaml against the session's Prefect server (tests/conftest.py's prefect_server), and
the paper bot's settings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate

from deployments.embedded import spawn, stop_children
from tests.conftest import ROOT, free_port

__all__ = ["ROOT", "free_port"]  # imported from here by the flows tests


@pytest.fixture
def bot_env(prefect_server: dict[str, str], pg_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a paper bot whose ledger is the test PostgreSQL database and state a temp folder."""
    return with_paper_bot(prefect_server, pg_url, tmp_path)


# Settings a test's paper bot must not inherit from the machine it runs on.
NOT_INHERITED = ("COINBASE_API_KEY", "COINBASE_API_SECRET", "COINBASE_KEY_FILE", "PERPS_PROFILE", "ACCOUNT")


def paper_bot_settings(database_url: str, folder: Path) -> dict[str, str]:
    """A paper bot that trades often (2/4 crossover) on this ledger, with its state and logs in folder."""
    return {
        "DATABASE_URL": database_url,
        "STATE_DIR": str(folder / "state"),
        "LOG_DIR": str(folder / "logs"),
        "STRATEGY_FAST_WINDOW": "2",
        "STRATEGY_SLOW_WINDOW": "4",
        "POSITION_SIZE_USD": "1000",
        "HEARTBEAT_INTERVAL_SECONDS": "0.2",
        "BROKER": "simulated",
        "PYTHONPATH": str(ROOT),
    }


def with_paper_bot(env: dict[str, str], database_url: str, folder: Path) -> dict[str, str]:
    """env plus paper_bot_settings, without the machine's own Coinbase key, profile or account."""
    merged = {k: v for k, v in env.items() if k not in NOT_INHERITED}
    merged.update(paper_bot_settings(database_url, folder))
    return merged


@pytest.fixture
def served_deployments(bot_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """`python -m deployments.serve_all`: every deployment of prefect.yaml registered and served; no run of an
    earlier test is left for this runner to pick up, and none of this test's is left for the next."""
    cancel_unfinished_runs()
    runner = spawn(["deployments.serve_all"], tmp_path / "serve.log", bot_env, ROOT)
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name("trading-bot/paper")
                break
            except Exception:
                if runner.poll() is not None or time.monotonic() > deadline:
                    stop_children([runner])
                    pytest.fail(
                        f"serve_all did not register deployments: {(tmp_path / 'serve.log').read_text()[-3000:]}"
                    )
                time.sleep(0.5)
    yield bot_env
    cancel_unfinished_runs()
    stop_children([runner], grace=40)
    print((tmp_path / "serve.log").read_text()[-5000:])  # shown by pytest when a test fails


def cancel_unfinished_runs() -> None:
    """Every trading-bot run on the shared server that is not final is cancelled: a scheduled one (a restart the
    automation made, a run a test started last) would otherwise be picked up by the next test's runner, with that
    test's ledger, and hold trading-bot's concurrency slot."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    unfinished = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED]
    flow_run_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished)))
    bot = FlowFilter(name=FlowFilterName(any_=["trading-bot"]))
    with get_client(sync_client=True) as client:
        while runs := client.read_flow_runs(flow_filter=bot, flow_run_filter=flow_run_filter, limit=200):
            for run in runs:
                client.set_flow_run_state(run.id, Cancelled(message="left by an earlier test"), force=True)


def set_variable(name: str, value: object) -> None:
    """Through the Prefect API, as the UI does."""
    with get_client(sync_client=True) as client:
        if client.read_variable_by_name(name) is None:
            client.create_variable(VariableCreate(name=name, value=value))  # type: ignore[arg-type]
        else:
            client.update_variable(VariableUpdate(name=name, value=value))  # type: ignore[arg-type]


def delete_variables() -> None:
    with get_client(sync_client=True) as client:
        for name in ("kill_switch", "reduce_only"):
            client.delete_variable_by_name(name) if client.read_variable_by_name(name) else None


@pytest.fixture
def clean_variables(prefect_server: dict[str, str]) -> Iterator[None]:
    """No kill_switch/reduce_only Variable before or after the test (the server is shared by the session)."""
    delete_variables()
    yield
    delete_variables()
