from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from trader.domain import Fill, Liquidity, Side
from trader.ledger import Ledger
from trader.ledger.db import alembic_config, make_engine, migrate
from trader.ledger.models import LedgerModel
from trader.ledger.types import DecimalType, UTCDateTime

HEAD = "0005"  # the newest migration
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
    "funding_rates",
    "funding_payments",
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


# --- 0004: every row belongs to an account -------------------------------------------------------------------

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def rows_before_accounts(url: str) -> None:
    """One order, one fill, one position and one state entry as a 0003 ledger holds them (no account column)."""
    orders = sa.table(
        "orders",
        *(sa.column(name) for name in ("client_order_id", "symbol", "side", "order_type", "time_in_force")),
        *(sa.column(name) for name in ("reduce_only", "status")),
        sa.column("quantity", DecimalType()),
        sa.column("filled_quantity", DecimalType()),
        sa.column("fees", DecimalType()),
        sa.column("created_at", UTCDateTime()),
        sa.column("updated_at", UTCDateTime()),
    )
    fills = sa.table(
        "fills",
        *(sa.column(name) for name in ("trade_id", "exchange_order_id", "client_order_id", "symbol", "side")),
        sa.column("liquidity"),
        sa.column("quantity", DecimalType()),
        sa.column("price", DecimalType()),
        sa.column("fee", DecimalType()),
        sa.column("filled_at", UTCDateTime()),
    )
    positions = sa.table(
        "positions",
        sa.column("symbol"),
        *(sa.column(name, DecimalType()) for name in ("quantity", "average_entry_price", "realized_pnl")),
        sa.column("updated_at", UTCDateTime()),
    )
    state = sa.table(
        "state_entries",
        *(sa.column(name) for name in ("key", "value", "checksum", "version")),
        sa.column("updated_at", UTCDateTime()),
    )
    order = {"client_order_id": "bot-1", "symbol": "BTC-USD", "side": "buy", "order_type": "limit"}
    fill = {"trade_id": "t-1", "exchange_order_id": "ex-1", "client_order_id": "bot-1", "symbol": "BTC-USD"}
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                orders.insert(),
                {
                    **order,
                    "time_in_force": "gtc",
                    "reduce_only": False,
                    "status": "filled",
                    "quantity": Decimal("0.01"),
                    "filled_quantity": Decimal("0.01"),
                    "fees": Decimal("0.39"),
                    "created_at": T0,
                    "updated_at": T0,
                },
            )
            connection.execute(
                fills.insert(),
                {
                    **fill,
                    "side": "buy",
                    "liquidity": "maker",
                    "quantity": Decimal("0.01"),
                    "price": Decimal("65000"),
                    "fee": Decimal("0.39"),
                    "filled_at": T0,
                },
            )
            connection.execute(
                positions.insert(),
                {
                    "symbol": "BTC-USD",
                    "quantity": Decimal("0.01"),
                    "average_entry_price": Decimal("65000"),
                    "realized_pnl": Decimal("-0.39"),
                    "updated_at": T0,
                },
            )
            connection.execute(
                state.insert(),
                {"key": "bot:cycle", "value": b"42", "checksum": "c" * 64, "version": 3, "updated_at": T0},
            )
    finally:
        engine.dispose()


def accounts_of(url: str, *tables: str) -> dict[str, list[str]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return {t: list(connection.execute(sa.text(f"SELECT account FROM {t}")).scalars()) for t in tables}
    finally:
        engine.dispose()


def test_rows_from_before_accounts_become_the_default_accounts_and_the_default_ledger_reads_them(
    empty_url: str,
) -> None:
    command.upgrade(alembic_config(empty_url), "0003")
    rows_before_accounts(empty_url)

    migrate(empty_url)

    assert tables_and_revision(empty_url)[1] == HEAD
    assert accounts_of(empty_url, "orders", "fills", "positions", "state_entries") == {
        "orders": ["default"],
        "fills": ["default"],
        "positions": ["default"],
        "state_entries": ["default"],
    }
    with Ledger(empty_url) as ledger:
        order = ledger.get_order("bot-1")
        assert order is not None and (order.status, order.quantity) == ("filled", Decimal("0.01"))
        assert [(f.trade_id, f.price) for f in ledger.list_fills()] == [("t-1", Decimal("65000"))]
        position = ledger.positions()["BTC-USD"]
        assert (position.quantity, position.average_entry_price) == (Decimal("0.01"), Decimal("65000"))
        assert ledger.realized_pnl("BTC-USD") == Decimal("-0.39")
        # a repeat of the old fill is known, not new: the default account owns the old trade id
        assert ledger.record_fills([old_fill()]) == 0
    with Ledger(empty_url, account="alpha", migrate=False) as alpha:
        assert alpha.list_orders() == [] and alpha.positions() == {}


def old_fill() -> Fill:
    """The fill rows_before_accounts wrote, as the broker reports it again."""
    return Fill(
        trade_id="t-1",
        order_id="ex-1",
        client_order_id="bot-1",
        symbol="BTC-USD",
        side=Side.BUY,
        quantity=Decimal("0.01"),
        price=Decimal("65000"),
        fee=Decimal("0.39"),
        liquidity=Liquidity.MAKER,
        filled_at=T0,
    )


def test_a_single_account_ledger_goes_back_to_0003_with_its_rows(empty_url: str) -> None:
    command.upgrade(alembic_config(empty_url), "0003")
    rows_before_accounts(empty_url)
    migrate(empty_url)
    with Ledger(empty_url, migrate=False) as ledger:
        ledger.record_fills([old_fill(), replace(old_fill(), trade_id="t-2", filled_at=T0 + timedelta(hours=1))])

    command.downgrade(alembic_config(empty_url), "0003")

    assert tables_and_revision(empty_url)[1] == "0003"
    engine = make_engine(empty_url)
    try:
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("orders")}
            fills = sorted(connection.execute(sa.text("SELECT trade_id FROM fills")).scalars())
            positions = list(connection.execute(sa.text("SELECT symbol FROM positions")).scalars())
            keys = list(connection.execute(sa.text("SELECT key FROM state_entries")).scalars())
    finally:
        engine.dispose()
    assert "account" not in columns
    assert (fills, positions, keys) == (["t-1", "t-2"], ["BTC-USD"], ["bot:cycle"])


def test_a_ledger_holding_another_account_refuses_to_go_back_to_0003_and_changes_nothing(empty_url: str) -> None:
    migrate(empty_url)
    with Ledger(empty_url, migrate=False) as default, Ledger(empty_url, account="beta", migrate=False) as beta:
        default.record_fills([old_fill()])
        beta.record_fills([old_fill()])  # the same trade id, another account: the old unique key cannot hold both

    with pytest.raises(RuntimeError, match=r"refused: table \w+ holds rows of account\(s\) beta"):
        command.downgrade(alembic_config(empty_url), "0003")

    # PostgreSQL rolls the whole downgrade back; SQLite's driver commits DDL as it goes, so there the step above
    # 0004 (0005: funding tables, fills.contract_size) stays undone, and the accounts' rows stay all the same.
    assert tables_and_revision(empty_url)[1] == (HEAD if empty_url.startswith("postgresql") else "0004")
    migrate(empty_url)  # (SQLite: back to the head; nothing to do on PostgreSQL)
    with Ledger(empty_url, migrate=False) as default, Ledger(empty_url, account="beta", migrate=False) as beta:
        assert [f.trade_id for f in default.fills_after(T0 - timedelta(days=1))] == ["t-1"]
        assert [f.trade_id for f in beta.fills_after(T0 - timedelta(days=1))] == ["t-1"]
