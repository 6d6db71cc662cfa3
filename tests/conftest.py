"""Shared fixtures for real services: a PostgreSQL database per test session, SQLite files, and the local
Coinbase Advanced Trade HTTPS server."""

from __future__ import annotations

import os
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
