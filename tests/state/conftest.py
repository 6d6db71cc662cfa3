"""Private services for the state tiers: a redis-server and a PostgreSQL cluster of our own on free loopback
ports, which the outage tests stop and restart for real (connection refused, not a mock)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine

from trader.drills.namespace import DrillError, DrillUnavailable
from trader.drills.services import PrivatePostgres, PrivateRedis
from trader.ledger.db import migrate
from trader.state.hot import MemoryCache, RedisCache
from trader.state.journal import WriteJournal
from trader.state.manager import StateManager
from trader.state.warm import SqlWarmStore

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class RedisServer(PrivateRedis):
    """The drills' private redis-server (no persistence, a free port: stop() is a real outage, start() an empty
    Redis) plus SIGSTOP/SIGCONT, an outage where connections hang instead of being refused."""

    def __init__(self) -> None:
        try:
            super().__init__()
        except DrillUnavailable as error:
            pytest.fail(str(error), False)

    def start(self, timeout: float = 10.0) -> None:
        assert not self.running, "already running"
        super().start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers, so clients time out (Redis keeps its data)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)


class PostgresCluster(PrivatePostgres):
    """The drills' private PostgreSQL cluster; a missing PostgreSQL or a failed pg_ctl fails the test."""

    def __init__(self) -> None:
        try:
            super().__init__()
        except DrillError as error:
            pytest.fail(str(error), False)

    def _run(self, command: list[str]) -> None:
        try:
            super()._run(command)
        except DrillError as error:
            pytest.fail(str(error), False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private Redis, running and empty for this test."""
    if not redis_server.running:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        migrate(cluster.url)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def private_pg_url(postgres_cluster: PostgresCluster) -> str:
    """The private PostgreSQL, running, migrated, with an empty state_entries table for this test."""
    if not postgres_cluster.running:
        postgres_cluster.start()
    engine = create_engine(postgres_cluster.url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM state_entries")
    engine.dispose()
    return postgres_cluster.url


@pytest.fixture
def shared_pg_store(pg_url: str) -> Iterator[SqlWarmStore]:
    """SqlWarmStore on the machine's shared PostgreSQL (a database for this session), emptied around each test."""
    migrate(pg_url)
    store = SqlWarmStore(pg_url, batch_size=50)
    store.clear()
    yield store
    store.clear()
    store.dispose()


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[SqlWarmStore]:
    migrate(sqlite_url)
    store = SqlWarmStore(sqlite_url, batch_size=50)
    yield store
    store.dispose()


class Clock:
    """A manual clock: each call returns the current time, advance() moves it (microsecond steps by default)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0.000001) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def memory_manager(sqlite_store: SqlWarmStore, tmp_path: Path, clock: Clock) -> StateManager:
    """MemoryCache over SQLite with a journal in tmp_path and a manual clock."""
    journal = WriteJournal(tmp_path / "journal.jsonl")
    return StateManager(MemoryCache(), sqlite_store, journal=journal, batch_size=50, clock=clock)


@pytest.fixture
def redis_cache(redis_url: str) -> Iterator[RedisCache]:
    cache = RedisCache(redis_url, prefix="state:")
    yield cache
    cache.close()
