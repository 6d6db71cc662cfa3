"""The ledger's tables: trading sessions, orders, fills, positions, balance snapshots, incidents, checklist runs,
and the warm state tier (state_entries) and checkpoints."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import BigInteger, Index, LargeBinary, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from trader.account_names import DEFAULT_ACCOUNT
from trader.ledger.types import DecimalType, UTCDateTime

SessionMode = Literal["paper", "live", "dry_run"]
SessionStatus = Literal["running", "stopped", "crashed", "recovered", "stood_down"]
IncidentStatus = Literal["open", "resolved"]
ChecklistStatus = Literal["pass", "warn", "fail", "running"]

# Named constraints keep Alembic batch mode (SQLite) and autogenerate comparisons stable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


INCIDENT_SEVERITIES = ("SEV-1", "SEV-2", "SEV-3")  # the runbook's levels (trader/alerts/severity.py)


class LedgerModel(SQLModel, registry=registry(metadata=MetaData(naming_convention=NAMING_CONVENTION))):
    """Base of the ledger tables; their own metadata, apart from any other SQLModel tables in the process."""


def money(*, nullable: bool = False, default: Decimal | None = None) -> Any:
    """A Decimal column for money or quantities."""
    required = default is None and not nullable
    return Field(default=... if required else default, sa_type=DecimalType, nullable=nullable)


def account_column(*, primary_key: bool = False, index: bool = True) -> Any:
    """The account a row belongs to (every ledger table has one; Ledger scopes every query by it). Tables whose
    composite key or index starts with the account need no index of their own."""
    return Field(
        default=DEFAULT_ACCOUNT,
        primary_key=primary_key,
        index=index and not primary_key,
        sa_type=String(64),
        sa_column_kwargs={"server_default": DEFAULT_ACCOUNT},
    )


def timestamp(*, nullable: bool = False, index: bool = False) -> Any:
    """An aware-UTC timestamp column."""
    return Field(default=None if nullable else ..., sa_type=UTCDateTime, nullable=nullable, index=index)


class TradingSession(LedgerModel, table=True):
    __tablename__ = "trading_sessions"

    account: str = account_column()
    id: str = Field(primary_key=True)
    profile: str
    broker: str
    mode: str
    status: str
    started_at: datetime = timestamp()
    ended_at: datetime | None = timestamp(nullable=True)
    last_heartbeat_at: datetime | None = timestamp(nullable=True)  # wall clock
    last_market_time: datetime | None = timestamp(nullable=True)  # replay or live market time, beside it
    cycles: int = 0
    flow_run_id: str | None = None
    note: str | None = None


class OrderRecord(LedgerModel, table=True):
    __tablename__ = "orders"
    __table_args__ = (UniqueConstraint("account", "client_order_id", name="uq_orders_account_client_order_id"),)

    account: str = account_column(index=False)
    id: int | None = Field(default=None, primary_key=True)
    client_order_id: str  # unique per account (uq_orders_account_client_order_id)
    exchange_order_id: str | None = Field(default=None, index=True)
    session_id: str | None = Field(default=None, foreign_key="trading_sessions.id")
    symbol: str
    side: str
    order_type: str
    time_in_force: str
    quantity: Decimal = money()
    limit_price: Decimal | None = money(nullable=True)
    stop_price: Decimal | None = money(nullable=True)
    expire_at: datetime | None = timestamp(nullable=True)
    reduce_only: bool = False
    status: str = Field(index=True)
    filled_quantity: Decimal = money(default=Decimal(0))
    average_fill_price: Decimal | None = money(nullable=True)
    fees: Decimal = money(default=Decimal(0))
    reject_reason: str | None = None
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()
    fencing_token: int | None = Field(default=None, sa_type=BigInteger)  # the lease token it was recorded under


class FillRecord(LedgerModel, table=True):
    __tablename__ = "fills"
    __table_args__ = (UniqueConstraint("account", "trade_id", name="uq_fills_account_trade_id"),)

    account: str = account_column(index=False)
    id: int | None = Field(default=None, primary_key=True)
    trade_id: str  # unique per account (uq_fills_account_trade_id)
    exchange_order_id: str
    client_order_id: str = Field(index=True)
    symbol: str
    side: str
    quantity: Decimal = money()
    price: Decimal = money()
    fee: Decimal = money()
    liquidity: str
    filled_at: datetime = timestamp(index=True)
    session_id: str | None = None
    contract_size: Decimal = Field(default=Decimal(1), sa_type=DecimalType, sa_column_kwargs={"server_default": "1"})


class FundingRateRecord(LedgerModel, table=True):
    """A future's funding rate as read for its next funding time (one row per symbol and funding time)."""

    __tablename__ = "funding_rates"
    __table_args__ = (UniqueConstraint("account", "symbol", "funding_time", name="uq_funding_rates_account"),)

    account: str = account_column(index=False)
    id: int | None = Field(default=None, primary_key=True)
    symbol: str
    rate: Decimal = money()
    funding_time: datetime = timestamp(index=True)
    recorded_at: datetime = timestamp()


class FundingPaymentRecord(LedgerModel, table=True):
    """Funding on a futures position: an hourly accrual (rate, contracts, mark) or its settlement into USD."""

    __tablename__ = "funding_payments"
    __table_args__ = (UniqueConstraint("account", "payment_id", name="uq_funding_payments_account"),)

    account: str = account_column(index=False)
    id: int | None = Field(default=None, primary_key=True)
    payment_id: str
    symbol: str
    at: datetime = timestamp(index=True)
    rate: Decimal | None = money(nullable=True)
    contracts: Decimal | None = money(nullable=True)
    mark_price: Decimal | None = money(nullable=True)
    amount: Decimal = money()
    settled: bool


class PositionRecord(LedgerModel, table=True):
    __tablename__ = "positions"

    account: str = account_column(primary_key=True)
    symbol: str = Field(primary_key=True)
    quantity: Decimal = money(default=Decimal(0))
    average_entry_price: Decimal = money(default=Decimal(0))
    realized_pnl: Decimal = money(default=Decimal(0))
    updated_at: datetime = timestamp()


class BalanceSnapshot(LedgerModel, table=True):
    __tablename__ = "balance_snapshots"

    account: str = account_column()
    id: int | None = Field(default=None, primary_key=True)
    snapshot_id: str = Field(index=True)
    session_id: str | None = None
    taken_at: datetime = timestamp(index=True)
    currency: str
    available: Decimal = money()
    hold: Decimal = money()
    price_quote: Decimal = money()
    value_quote: Decimal = money()


class Incident(LedgerModel, table=True):
    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_account_fingerprint", "account", "fingerprint"),)

    account: str = account_column(index=False)
    id: int | None = Field(default=None, primary_key=True)
    fingerprint: str  # indexed with the account (ix_incidents_account_fingerprint)
    severity: str
    title: str
    detail: str = Field(sa_type=Text)
    source: str
    status: str = "open"
    opened_at: datetime = timestamp()
    updated_at: datetime = timestamp()
    resolved_at: datetime | None = timestamp(nullable=True)
    notified: bool = False
    slack_ts: str | None = None


class ChecklistRun(LedgerModel, table=True):
    __tablename__ = "checklist_runs"

    account: str = account_column()
    id: int | None = Field(default=None, primary_key=True)
    checklist: str
    flow_run_id: str | None = None
    started_at: datetime = timestamp()
    finished_at: datetime | None = timestamp(nullable=True)
    status: str
    results_json: str = Field(sa_type=Text)


class StateEntry(LedgerModel, table=True):
    """One key of the warm state tier: the value as stored bytes, its sha256, a version bumped on every write."""

    __tablename__ = "state_entries"

    account: str = account_column(primary_key=True)
    key: str = Field(primary_key=True, sa_type=String(512))
    value: bytes = Field(sa_type=LargeBinary)
    checksum: str = Field(sa_type=String(64))
    version: int = Field(sa_type=BigInteger)
    updated_at: datetime = timestamp()


class Checkpoint(LedgerModel, table=True):
    """A consistent snapshot of bot state; the payload (compressed or not) is also copied to the cold tier."""

    __tablename__ = "checkpoints"

    account: str = account_column()
    id: str = Field(primary_key=True, sa_type=String(64))
    created_at: datetime = timestamp(index=True)
    session_id: str | None = None
    reason: str
    compressed: bool
    size_bytes: int = Field(sa_type=BigInteger)
    sha256: str = Field(sa_type=String(64))
    payload: bytes = Field(sa_type=LargeBinary)
    cold_key: str | None = None


class AccountLease(LedgerModel, table=True):
    """Who may trade the account: one row per account; the token only ever increases (fencing)."""

    __tablename__ = "account_leases"

    account: str = Field(primary_key=True, sa_type=String(64))
    token: int = Field(sa_type=BigInteger)
    holder_kind: str
    holder_host: str
    holder_pid: int
    holder_instance: str
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    acquired_at: datetime = timestamp()
    renewed_at: datetime = timestamp()
    expires_at: datetime = timestamp()
    ttl_seconds: float


class LeaseEventRecord(LedgerModel, table=True):
    """The lease's history: acquired, broken, override, released, lost."""

    __tablename__ = "lease_events"

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(index=True, sa_type=String(64))
    token: int = Field(sa_type=BigInteger)
    event: str
    holder: str = Field(sa_type=Text)
    at: datetime = timestamp()
    note: str | None = Field(default=None, sa_type=Text)
