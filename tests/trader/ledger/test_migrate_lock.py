"""Many processes migrating one fresh ledger at the same instant: one migrates, the others wait and find it at head."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from trader.ledger.db import alembic_config, make_engine, migration_lock_path

PROCESSES = 6
REPO_ROOT = Path(__file__).resolve().parents[3]
# Each child imports first, says "ready", then blocks on its stdin: one shared pipe whose write end the test closes
# once every child is ready, so all of them call migrate() at the same instant.
CHILD = """
import sys
from trader.ledger.db import migrate
print("ready", flush=True)
sys.stdin.read()
print("migrated" if migrate(sys.argv[1]) else "at-head", flush=True)
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest) -> str:
    """A database with no tables yet, on each backend."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url"))


def migrate_at_once(url: str, processes: int) -> list[tuple[int, str, str]]:
    """Start the children, release them together, return (exit code, stdout, stderr) for each."""
    gate_read, gate_write = os.pipe()
    children = []
    try:
        for _ in range(processes):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, url],
                    stdin=gate_read,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=REPO_ROOT,
                )
            )
        os.close(gate_read)
        gate_read = -1
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n", child.stderr.read() if child.stderr else ""
    finally:
        if gate_read >= 0:
            os.close(gate_read)
        os.close(gate_write)  # the gate opens: every child's stdin reaches EOF now
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        results.append((child.returncode, out.strip(), err.strip()))
    return results


def revision_and_tables(url: str) -> tuple[str | None, set[str]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
            return revision, set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def test_processes_migrating_one_fresh_ledger_at_once_all_succeed_and_one_migrates(fresh_url: str) -> None:
    results = migrate_at_once(fresh_url, PROCESSES)

    assert [(code, err) for code, _, err in results if code != 0] == []
    outcomes = sorted(out for _, out, _ in results)
    assert outcomes == ["at-head"] * (PROCESSES - 1) + ["migrated"]
    revision, tables = revision_and_tables(fresh_url)
    assert revision == ScriptDirectory.from_config(alembic_config(fresh_url)).get_current_head()
    assert {"trading_sessions", "orders", "fills", "checklist_runs", "alembic_version"} <= tables


def test_sqlite_lock_file_sits_beside_the_database_and_memory_has_none(sqlite_url: str) -> None:
    lock = migration_lock_path(sqlite_url)

    assert lock is not None
    assert lock.name == "ledger.db.migrate.lock"
    assert lock.parent == Path(sqlite_url.removeprefix("sqlite:///")).parent
    assert migration_lock_path("sqlite://") is None
    assert migration_lock_path("sqlite:///:memory:") is None
    assert migration_lock_path("postgresql+psycopg2://postgres@127.0.0.1:5432/test") is None
