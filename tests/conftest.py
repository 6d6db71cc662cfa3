"""Shared fixtures for real services: a PostgreSQL database per test session, SQLite files, one Prefect server for
the session, and the local Coinbase Advanced Trade HTTPS server."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey, generate_cdp_key

# Tests that want the exporter start it on a free port; nothing else may bind the operator's 9102.
os.environ["METRICS_ENABLED"] = "0"
# The environment before any test changed it: what the session's Prefect server (and bots served against it) inherit.
SESSION_ENVIRON = dict(os.environ)
ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
POSTGRES_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An autocommit engine on the server's admin database; fails (never skips) when PostgreSQL is down."""
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    reason = None
    try:
        with engine.connect():
            pass
    except OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0]
    if reason is not None:  # outside the except block, so the report is one line, not a chained traceback
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable ({reason}); start it: {POSTGRES_START}", False)
    yield engine
    engine.dispose()


def _create_database(admin: Engine) -> str:
    name = f"ledger_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


def _drop_database(admin: Engine, url: str) -> None:
    name = make_url(url).database
    with admin.connect() as connection:
        connection.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def pg_url(postgres_admin: Engine) -> Iterator[str]:
    """A fresh PostgreSQL database for the whole test session, dropped afterwards."""
    url = _create_database(postgres_admin)
    yield url
    _drop_database(postgres_admin, url)


@pytest.fixture
def fresh_pg_url(postgres_admin: Engine) -> Iterator[str]:
    """A brand-new empty (un-migrated) PostgreSQL database for one test."""
    url = _create_database(postgres_admin)
    yield url
    _drop_database(postgres_admin, url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in the test's temporary folder; the file does not exist yet."""
    return f"sqlite:///{(tmp_path / 'ledger.db').as_posix()}"


# --- one Prefect server for the session -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`prefect server start` (SQLite in a temporary PREFECT_HOME, every server service: triggers and actions for
    automations, the scheduler) on a free loopback port; started by the first test that asks for a Prefect server,
    stopped at the end of the session. Yields the environment that points at it: the session's environment as it
    was before any test changed it (not the monkeypatched one of the test that happened to start it)."""
    from deployments.embedded import prefect_env, spawn, stop_children, wait_for_api

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        for name in set(os.environ) - set(SESSION_ENVIRON):
            patch.delenv(name)
        for name, value in SESSION_ENVIRON.items():
            patch.setenv(name, value)
        env = prefect_env(home, port)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    server = spawn(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], home / "server.log", env, ROOT
    )
    try:
        wait_for_api(port, timeout=180, process=server)
    except RuntimeError as error:
        stop_children([server])
        pytest.fail(f"Prefect server did not start: {error}; log: {(home / 'server.log').read_text()[-2000:]}")
    yield env
    _drain_prefect_workers()
    stop_children([server], grace=20)


def _drain_prefect_workers() -> None:
    """Deliver the logs and events this process still holds for the server, and stop their workers (as
    prefect_test_harness does when it exits): nothing of one module reaches the server during the next."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30, at_exit=False)
    EventsWorker.drain_all(timeout=30, at_exit=False)


@pytest.fixture(scope="module")
def prefect_server(prefect_server_process: dict[str, str]) -> Iterator[dict[str, str]]:
    """The session's Prefect server for this test module: from the first test that asks for it to the module's end
    (so before any function-scoped fixture of that test, as prefect_test_harness was), PREFECT_API_URL (environment
    and Prefect settings) and PREFECT_HOME (settings) point at it, also in the process-global settings context that
    threads started earlier fall back to; all are restored afterwards and the logs and events this process still
    holds are delivered. Yields the server's environment, for subprocesses.

    The server is shared by the session: a test finds what it made by its own flow run id, deployment or a name it
    owns, and removes the automations, blocks and variables it created."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    env = prefect_server_process
    updates = {PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_HOME: Path(env["PREFECT_HOME"])}
    with pytest.MonkeyPatch.context() as patch, temporary_settings(updates=updates):
        patch.setenv("PREFECT_API_URL", env["PREFECT_API_URL"])
        with _temporary_global_settings_context(get_settings_context()):
            try:
                yield env
            finally:
                _drain_prefect_workers()


# --- the local Coinbase Advanced Trade server -------------------------------------------------------------------


@pytest.fixture
def cdp_key() -> CdpKey:
    """A fresh CDP-style EC key; the server below knows its public half."""
    return generate_cdp_key(f"organizations/gpt-trader-test/apiKeys/{uuid.uuid4()}")


@pytest.fixture
def start_exchange(tmp_path: Path, cdp_key: CdpKey) -> Iterator[Callable[..., AdvancedTradeServer]]:
    """Starts AdvancedTradeServers (HTTPS on a free loopback port) for cdp_key; all are stopped after the test."""
    started: list[AdvancedTradeServer] = []

    def start(**options: Any) -> AdvancedTradeServer:
        server = AdvancedTradeServer(
            key_name=cdp_key.name,
            public_key_pem=cdp_key.public_key_pem,
            cert_dir=tmp_path / f"tls-{len(started)}",
            **options,
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def exchange(start_exchange: Callable[..., AdvancedTradeServer]) -> AdvancedTradeServer:
    """One started Advanced Trade server with the default account (USD 100,000)."""
    return start_exchange()
