"""What every section of the Ledger shares: its engine, its account, one short transaction per call, its errors.

Invariant: a Ledger reads and writes only the rows of its own account (every section filters and sets
`account == self.account`); the lease methods alone name their account explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session

from trader.account_names import DEFAULT_ACCOUNT, account_name_problem
from trader.domain import OrderStatus
from trader.errors import TraderError
from trader.ledger.db import IDLE_IN_TRANSACTION_SECONDS, make_engine
from trader.ledger.db import migrate as migrate_database

# The database did not answer (down, busy past its timeout, refused the connection): worth asking again later.
LEDGER_UNANSWERED: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


OPEN_STATUSES = (OrderStatus.PENDING_SUBMIT.value, OrderStatus.OPEN.value, OrderStatus.PARTIALLY_FILLED.value)


class LedgerError(TraderError):
    """The ledger refused a write or could not find a record."""


class DuplicateClientOrderId(LedgerError):
    """An order with this client_order_id is already in the ledger; nothing was written."""


def now() -> datetime:
    return datetime.now(UTC)


def valid_account(account: str) -> str:
    """The account name, or LedgerError saying what a name may hold."""
    problem = account_name_problem(account)
    if problem is not None:
        raise LedgerError(f"account: {problem} (the ACCOUNT setting)")
    return account


def require(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """LedgerError unless value is one of allowed."""
    if value not in allowed:
        raise LedgerError(f"{name} {value!r} is not allowed: use one of {', '.join(allowed)}")


class LedgerBase:
    """The engine and the transactions the sections of the Ledger (trader/ledger/ledger.py) run their queries in,
    and the account every one of those queries is scoped to."""

    engine: Engine

    def __init__(
        self,
        database_url: str,
        *,
        account: str = DEFAULT_ACCOUNT,
        migrate: bool = True,
        idle_in_transaction_seconds: float = IDLE_IN_TRANSACTION_SECONDS,
    ) -> None:
        self.account = valid_account(account)
        if migrate:
            migrate_database(database_url)
        self.database_url = database_url
        self.engine = make_engine(database_url, idle_in_transaction_seconds=idle_in_transaction_seconds)

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _consistent_read(self) -> Iterator[Session]:
        """Several reads from one snapshot: REPEATABLE READ on PostgreSQL, one read transaction on SQLite."""
        with Session(self.engine, expire_on_commit=False) as session:
            if self.engine.dialect.name == "postgresql":
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            elif self.engine.dialect.name == "sqlite":
                # pysqlite opens transactions lazily (only before writes): BEGIN makes the reads one WAL snapshot.
                session.connection().exec_driver_sql("BEGIN")
            try:
                yield session
            finally:
                session.expunge_all()  # the rows read stay loaded: rollback would expire them
                session.rollback()

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        """The database behind the ledger: "sqlite" or "postgresql"."""
        return self.engine.dialect.name
