"""The Ledger's housekeeping: is the database there, how big it is, how its account's rows grow, VACUUM, and which
accounts the database holds."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sqlalchemy import Column, text, union
from sqlmodel import func, select

from trader.ledger.base import LedgerBase
from trader.ledger.models import AccountLease, LedgerModel, OrderRecord, TradingSession

TABLES = LedgerModel.metadata.tables
# The column that dates each row of a ledger table, for row growth per month.
DATED_BY = {
    "trading_sessions": "started_at",
    "orders": "created_at",
    "fills": "filled_at",
    "positions": "updated_at",
    "balance_snapshots": "taken_at",
    "incidents": "opened_at",
    "checklist_runs": "started_at",
    "state_entries": "updated_at",
    "checkpoints": "created_at",
}


class HousekeepingMixin(LedgerBase):
    def counts(self, *, every_account: bool = False) -> dict[str, int]:
        """Rows per table of the Ledger's account (every_account: of the whole database, e.g. beside its size)."""
        counted = {}
        with self._transaction() as session:
            for name, table in TABLES.items():
                query = select(func.count()).select_from(table)
                if not every_account:
                    query = query.where(table.c.account == self.account)
                counted[name] = session.exec(query).one()
        return counted

    def ping(self) -> float:
        """One round trip to the database (SELECT 1); how long it took, in milliseconds."""
        started = time.perf_counter()
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return (time.perf_counter() - started) * 1000

    def database_size(self) -> int:
        """Bytes used by the ledger database, every account's rows (pg_database_size, or SQLite pages)."""
        with self.engine.connect() as connection:
            if self.backend == "postgresql":
                return int(connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
            pages = connection.execute(text("PRAGMA page_count")).scalar_one()
            return int(pages * connection.execute(text("PRAGMA page_size")).scalar_one())

    def vacuum(self) -> list[str]:
        """PostgreSQL VACUUM (ANALYZE) on an autocommit connection (it cannot run in a transaction); SQLite VACUUM
        and ANALYZE. Returns the statements run."""
        statements = ["VACUUM (ANALYZE)"] if self.backend == "postgresql" else ["VACUUM", "ANALYZE"]
        with self.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
            for statement in statements:
                connection.execute(text(statement))
        return statements

    def rows_dated_between(
        self, start: datetime, end: datetime, *, every_account: bool = False
    ) -> list[tuple[str, datetime]]:
        """(table, when) of every row of the Ledger's account (every_account: of the whole database) dated in
        [start, end) by its table's dating column (DATED_BY)."""
        dated: list[tuple[str, datetime]] = []
        with self._transaction() as session:
            for name, column in DATED_BY.items():
                table = TABLES[name]
                stamp: Column[Any] = table.c[column]
                query = select(stamp).where(stamp >= start, stamp < end)
                if not every_account:
                    query = query.where(table.c.account == self.account)
                dated += [(name, at) for at in session.exec(query).all()]
        return dated

    def known_accounts(self) -> list[str]:
        """Every account the database holds a trading session, an order or a lease of, sorted (for summaries)."""
        accounts = union(
            select(TradingSession.account), select(OrderRecord.account), select(AccountLease.account)
        ).subquery()
        with self._transaction() as session:
            return sorted(session.exec(select(accounts.c.account)).all())
