from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from trader.ledger.db import alembic_config, make_engine, migrate
from trader.ledger.models import LedgerModel

HEAD = "0004"  # the newest migration
REPO_ROOT = Path(__file__).resolve().parents[3]
LEDGER_TABLES = {
    "trading_sessions",
    "orders",
    "fills",
    "positions",
    "balance_snapshots",
    "incidents",
    "checklist_runs",
    "state_entries",
    "checkpoints",
    "account_leases",
    "lease_events",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest) -> str:
    """A database with no tables yet, on each backend."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url"))


def tables_and_revision(url: str) -> tuple[set[str], str | None]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names()), MigrationContext.configure(
                connection
            ).get_current_revision()
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), LedgerModel.metadata))
    finally:
        engine.dispose()


def test_migrations_create_every_ledger_table_and_can_run_twice(empty_url: str) -> None:
    migrate(empty_url)
    migrate(empty_url)

    tables, revision = tables_and_revision(empty_url)
    assert tables == LEDGER_TABLES | {"alembic_version"}
    assert revision == HEAD


def test_migrated_schema_matches_the_models_exactly(empty_url: str) -> None:
    migrate(empty_url)

    assert schema_differences(empty_url) == []


def test_downgrade_to_base_removes_every_ledger_table_and_upgrade_restores_them(empty_url: str) -> None:
    migrate(empty_url)

    command.downgrade(alembic_config(empty_url), "base")
    assert tables_and_revision(empty_url)[0] <= {"alembic_version"}
    migrate(empty_url)
    assert tables_and_revision(empty_url) == (LEDGER_TABLES | {"alembic_version"}, HEAD)


def test_migrate_works_from_any_working_directory(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    migrate(sqlite_url)

    assert tables_and_revision(sqlite_url)[1] == HEAD


def test_operators_can_migrate_with_the_alembic_command_and_x_url(fresh_pg_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={fresh_pg_url}", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert tables_and_revision(fresh_pg_url) == (LEDGER_TABLES | {"alembic_version"}, HEAD)


def test_alembic_command_takes_the_url_from_database_url(sqlite_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert tables_and_revision(sqlite_url)[1] == HEAD
