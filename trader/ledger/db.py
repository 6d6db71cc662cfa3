"""Engines and migrations for the ledger database: SQLite by default, PostgreSQL in production.

Migrations are serialized across processes: one migrates while the others wait, then find the schema at head.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_URL = "sqlite:///var/state/ledger.db"
# A ledger session that sits inside a transaction longer than this is ended by PostgreSQL, and its row locks with it.
# Every ledger transaction is a few statements with no network call between them, so only a process that stopped
# mid-transaction (its machine lost, partitioned or frozen) gets there: without the cap, the lease row it locked in
# check_fence would stay locked until TCP gave up on the connection (hours), and no successor could take the
# account's lease. The bot sets it to its lease TTL (trader/runtime.py), so a successor waits at most that long.
IDLE_IN_TRANSACTION_SECONDS = 30.0
IDLE_SETTING = "idle_in_transaction_session_timeout"
# pg_advisory_lock key for ledger migrations (advisory locks are per database): "GPTLEDGR" as a bigint.
MIGRATION_LOCK_KEY = 0x4750544C45444752


def make_engine(url: str, *, idle_in_transaction_seconds: float = IDLE_IN_TRANSACTION_SECONDS) -> Engine:
    """An engine for the ledger: SQLite in WAL mode with foreign keys on, PostgreSQL with pre-ping and a cap on how
    long a session may sit idle inside a transaction (see IDLE_IN_TRANSACTION_SECONDS)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        if parsed.get_driver_name() == "psycopg2":
            idle_ms = max(1, round(idle_in_transaction_seconds * 1000))
            options = " ".join(filter(None, (str(parsed.query.get("options", "")), f"-c {IDLE_SETTING}={idle_ms}")))
            # execute_batch for multi-row UPDATE/DELETE: one round trip per page instead of one per row.
            return create_engine(
                parsed.difference_update_query(["options"]),
                pool_pre_ping=True,
                executemany_mode="values_plus_batch",
                connect_args={"options": options},
            )
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str) -> Config:
    """Alembic's configuration for the migrations shipped inside this package; no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migration_lock_path(url: str) -> Path | None:
    """The file that serializes migrations of a SQLite ledger (beside it); None for in-memory or non-SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not _sqlite_file(parsed):
        return None
    return Path(f"{parsed.database}.migrate.lock")


def _sqlite_file(parsed: URL) -> bool:
    database = parsed.database or ""
    return database not in ("", ":memory:") and not database.startswith("file::memory:")


def migrate(url: str) -> bool:
    """Upgrade the ledger database at url to the newest schema; safe to run again and from many processes at once.

    Returns True when this call ran migrations, False when the schema was already at head.
    """
    config = alembic_config(url)
    head = ScriptDirectory.from_config(config).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = _revision(connection)
            connection.rollback()  # end the read's implicit transaction before locking
            if current == head:
                return False
            with _migration_lock(connection, url):
                # Re-read under the lock: the process that held it before us may have done the whole upgrade.
                with connection.begin():
                    if _revision(connection) == head:
                        return False
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
                return True
    finally:
        engine.dispose()


def _revision(connection: Connection) -> str | None:
    """The revision stamped in the database, None when it has never been migrated."""
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _migration_lock(connection: Connection, url: str) -> Iterator[None]:
    """Hold the cross-process migration lock: an advisory lock on PostgreSQL, a file lock beside a SQLite file."""
    if connection.dialect.name == "postgresql":
        # Session-level, on the connection that migrates; released below, or by the server if this process dies.
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()
        try:
            yield
        finally:
            if connection.in_transaction():
                connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
        return
    path = migration_lock_path(url)
    if path is None:  # in-memory SQLite: no other process can see this database
        yield
        return
    with path.open("a") as handle:
        # flock is released when the file is closed, including when this process dies mid-migration.
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
