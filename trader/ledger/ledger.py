"""The trading ledger: every session, order, fill, position, balance snapshot, incident and checklist run."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, localcontext
from typing import Any, get_args

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from trader.domain import Balance, Fill, Order, OrderRequest, OrderStatus, Position, Side
from trader.errors import TraderError
from trader.ledger import lease
from trader.ledger.db import make_engine
from trader.ledger.db import migrate as migrate_database
from trader.ledger.lease import Fence, Holder, LeaseEvent, LeaseInfo
from trader.ledger.models import (
    BalanceSnapshot,
    ChecklistRun,
    ChecklistStatus,
    FillRecord,
    Incident,
    LedgerModel,
    OrderRecord,
    PositionRecord,
    SessionMode,
    Severity,
    TradingSession,
)
from trader.ledger.types import canonical_decimal

OPEN_STATUSES = (OrderStatus.PENDING_SUBMIT.value, OrderStatus.OPEN.value, OrderStatus.PARTIALLY_FILLED.value)
ENDED_STATUSES = ("stopped", "crashed", "recovered", "stood_down")
TABLES = LedgerModel.metadata.tables


class LedgerError(TraderError):
    """The ledger refused a write or could not find a record."""


class DuplicateClientOrderId(LedgerError):
    """An order with this client_order_id is already in the ledger; nothing was written."""


def _now() -> datetime:
    return datetime.now(UTC)


def _require(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise LedgerError(f"{name} {value!r} is not allowed: use one of {', '.join(allowed)}")


def _apply_fill(position: PositionRecord, fill: Fill) -> None:
    """Average-cost accounting: adding re-weights the entry price, reducing realizes PnL; fees always cost."""
    signed = fill.quantity if fill.side == Side.BUY else -fill.quantity
    held = position.quantity
    with localcontext(prec=80):
        position.realized_pnl -= fill.fee
        if signed and (held == 0 or (held > 0) == (signed > 0)):
            total = abs(held) * position.average_entry_price + fill.quantity * fill.price
            position.average_entry_price = canonical_decimal(total / abs(held + signed))
        elif signed:
            closed = min(abs(held), fill.quantity)
            direction = 1 if held > 0 else -1
            position.realized_pnl += (fill.price - position.average_entry_price) * closed * direction
            if abs(signed) > abs(held):  # crossed through zero: the remainder opens at the fill price
                position.average_entry_price = fill.price
        position.quantity = held + signed
        if position.quantity == 0:
            position.average_entry_price = Decimal(0)
    position.realized_pnl = canonical_decimal(position.realized_pnl)
    position.updated_at = fill.filled_at


class Ledger:
    """The bot's durable record on SQLite or PostgreSQL; every method is one short transaction."""

    def __init__(self, database_url: str, *, migrate: bool = True) -> None:
        if migrate:
            migrate_database(database_url)
        self.database_url = database_url
        self.engine = make_engine(database_url)

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # --- trading sessions --------------------------------------------------------------------------------------

    def start_session(
        self, profile: str, broker: str, mode: str, flow_run_id: str | None = None, *, at: datetime | None = None
    ) -> str:
        """Open a trading session and return its id."""
        _require("session mode", mode, get_args(SessionMode))
        row = TradingSession(
            id=uuid.uuid4().hex,
            profile=profile,
            broker=broker,
            mode=mode,
            status="running",
            started_at=at or _now(),
            cycles=0,
            flow_run_id=flow_run_id,
        )
        with self._transaction() as session:
            session.add(row)
        return row.id

    def heartbeat(
        self, session_id: str, cycles: int, market_time: datetime | None = None, *, at: datetime | None = None
    ) -> None:
        """Record that the session is alive after this many cycles: wall-clock `at` (default now), the market time
        beside it (replay time is years behind the wall clock; freshness checks read last_heartbeat_at)."""
        with self._transaction() as session:
            row = self._session_row(session, session_id)
            row.cycles = cycles
            row.last_heartbeat_at = at or _now()
            row.last_market_time = market_time

    def end_session(self, session_id: str, status: str, note: str | None = None, *, at: datetime | None = None) -> None:
        """Close the session as stopped, crashed or recovered."""
        _require("session status", status, ENDED_STATUSES)
        with self._transaction() as session:
            row = self._session_row(session, session_id)
            row.status = status
            row.ended_at = at or _now()
            row.note = note

    def get_session(self, session_id: str) -> TradingSession:
        """The trading session with this id."""
        with self._transaction() as session:
            return self._session_row(session, session_id)

    def list_sessions(self) -> list[TradingSession]:
        """Every trading session, oldest first."""
        with self._transaction() as session:
            return list(session.exec(select(TradingSession).order_by(col(TradingSession.started_at))).all())

    def find_session_by_flow_run(self, flow_run_id: str) -> TradingSession | None:
        """The newest trading session started by this Prefect flow run, or None."""
        query = select(TradingSession).where(TradingSession.flow_run_id == flow_run_id)
        with self._transaction() as session:
            return session.exec(query.order_by(col(TradingSession.started_at).desc())).first()

    @staticmethod
    def _session_row(session: Session, session_id: str) -> TradingSession:
        row = session.get(TradingSession, session_id)
        if row is None:
            raise LedgerError(f"no trading session {session_id} in the ledger")
        return row

    # --- orders ------------------------------------------------------------------------------------------------

    def record_pending(
        self, request: OrderRequest, session_id: str | None, at: datetime, *, fence: Fence | None = None
    ) -> None:
        """Record an order before it is sent (pending_submit); refuses a client_order_id already used, and, with a
        fence, a writer whose lease token is not the account's current unexpired one (LeaseLost), in the same
        transaction."""
        row = _new_order_row(
            request,
            session_id=session_id,
            status=OrderStatus.PENDING_SUBMIT.value,
            created_at=at,
            updated_at=at,
            fencing_token=fence.token if fence is not None else None,
        )
        duplicate = DuplicateClientOrderId(f"client_order_id {request.client_order_id} is already in the ledger")
        try:
            with self._transaction() as session:
                if fence is not None:
                    lease.check_fence(session, fence, _now())
                if self._order_row(session, request.client_order_id) is not None:
                    raise duplicate
                session.add(row)
        except IntegrityError as error:  # a concurrent writer won the race to the unique index
            if self.get_order(request.client_order_id) is not None:
                raise duplicate from error
            raise

    def apply_order(self, order: Order) -> None:
        """Take the broker's view of an order; inserts it if the ledger never saw it."""
        self.apply_orders([order])

    def apply_orders(self, orders: list[Order]) -> None:
        """apply_order for many orders in one transaction (one query to find their rows)."""
        if not orders:
            return
        with self._transaction() as session:
            ids = [o.client_order_id for o in orders]
            query = select(OrderRecord).where(col(OrderRecord.client_order_id).in_(ids))
            rows = {row.client_order_id: row for row in session.exec(query).all()}
            for order in orders:
                row = rows.get(order.client_order_id)
                if row is None:
                    row = _new_order_row(order, status=str(order.status), created_at=order.created_at)
                    rows[order.client_order_id] = row
                    session.add(row)
                row.exchange_order_id = order.order_id or row.exchange_order_id
                row.status = str(order.status)
                row.filled_quantity = order.filled_quantity
                row.average_fill_price = order.average_fill_price
                row.fees = order.fees
                row.reject_reason = order.reject_reason
                row.updated_at = order.updated_at or order.created_at

    def mark_failed(self, client_order_id: str, reason: str, at: datetime) -> None:
        """Mark an order that never reached the broker as failed, with the reason."""
        with self._transaction() as session:
            row = self._order_row(session, client_order_id)
            if row is None:
                raise LedgerError(f"no order with client_order_id {client_order_id} in the ledger")
            row.status = OrderStatus.FAILED.value
            row.reject_reason = reason
            row.updated_at = at

    def open_orders(self) -> list[OrderRecord]:
        """Orders not yet terminal: pending_submit, open, partially_filled."""
        query = select(OrderRecord).where(col(OrderRecord.status).in_(OPEN_STATUSES)).order_by(col(OrderRecord.id))
        with self._transaction() as session:
            return list(session.exec(query).all())

    def get_order(self, client_order_id: str) -> OrderRecord | None:
        """The order with this client_order_id, or None."""
        with self._transaction() as session:
            return self._order_row(session, client_order_id)

    def list_orders(self, session_id: str | None = None) -> list[OrderRecord]:
        """Every order, or those of one trading session, oldest first."""
        query = select(OrderRecord).order_by(col(OrderRecord.id))
        if session_id is not None:
            query = query.where(OrderRecord.session_id == session_id)
        with self._transaction() as session:
            return list(session.exec(query).all())

    @staticmethod
    def _order_row(session: Session, client_order_id: str) -> OrderRecord | None:
        return session.exec(select(OrderRecord).where(OrderRecord.client_order_id == client_order_id)).first()

    # --- fills and positions -----------------------------------------------------------------------------------

    def record_fills(self, fills: list[Fill], session_id: str | None = None) -> int:
        """Insert fills with new trade ids and update positions from them; returns how many were new."""
        if not fills:
            return 0
        trade_ids = {fill.trade_id for fill in fills}
        with self._transaction() as session:
            seen = set(session.exec(select(FillRecord.trade_id).where(col(FillRecord.trade_id).in_(trade_ids))).all())
            positions: dict[str, PositionRecord] = {}
            inserted = 0
            for fill in sorted(fills, key=lambda f: f.filled_at):
                if fill.trade_id in seen:
                    continue
                seen.add(fill.trade_id)
                session.add(_fill_row(fill, session_id))
                if fill.symbol not in positions:
                    positions[fill.symbol] = session.get(PositionRecord, fill.symbol) or PositionRecord(
                        symbol=fill.symbol, updated_at=fill.filled_at
                    )
                    session.add(positions[fill.symbol])
                _apply_fill(positions[fill.symbol], fill)
                inserted += 1
        return inserted

    def list_fills(self, session_id: str | None = None) -> list[FillRecord]:
        """Every fill, or those of one trading session, in execution order."""
        query = select(FillRecord).order_by(col(FillRecord.filled_at), col(FillRecord.id))
        if session_id is not None:
            query = query.where(FillRecord.session_id == session_id)
        with self._transaction() as session:
            return list(session.exec(query).all())

    def last_fill_time(self) -> datetime | None:
        """When the newest recorded fill executed, or None before the first fill."""
        with self._transaction() as session:
            return session.exec(select(func.max(FillRecord.filled_at))).one()

    def positions(self) -> dict[str, Position]:
        """Non-zero positions by symbol."""
        with self._transaction() as session:
            rows = session.exec(select(PositionRecord)).all()
        return {
            row.symbol: Position(row.symbol, row.quantity, row.average_entry_price) for row in rows if row.quantity != 0
        }

    def realized_pnl(self, symbol: str) -> Decimal:
        """Realized PnL of a product net of every fee, in its quote currency; 0 if never traded."""
        with self._transaction() as session:
            row = session.get(PositionRecord, symbol)
        return row.realized_pnl if row is not None else Decimal(0)

    def set_position(self, symbol: str, quantity: Decimal, average_entry_price: Decimal, at: datetime) -> None:
        """Overwrite a position with the broker's truth (reconciliation); realized PnL is kept."""
        with self._transaction() as session:
            row = session.get(PositionRecord, symbol) or PositionRecord(symbol=symbol, updated_at=at)
            row.quantity = quantity
            row.average_entry_price = average_entry_price
            row.updated_at = at
            session.add(row)

    # --- balances ----------------------------------------------------------------------------------------------

    def record_balance_snapshot(
        self, session_id: str | None, balances: list[Balance], prices: dict[str, Decimal], taken_at: datetime
    ) -> str:
        """Store every balance valued in the quote currency (price 1 for the quote itself); returns the snapshot id."""
        snapshot_id = uuid.uuid4().hex
        with self._transaction() as session:
            for balance in balances:
                price = prices.get(balance.currency, Decimal(0))
                session.add(
                    BalanceSnapshot(
                        snapshot_id=snapshot_id,
                        session_id=session_id,
                        taken_at=taken_at,
                        currency=balance.currency,
                        available=balance.available,
                        hold=balance.hold,
                        price_quote=price,
                        value_quote=balance.total * price,
                    )
                )
        return snapshot_id

    def equity_at_start_of_day(self, day: date) -> Decimal | None:
        """Total quote value of the first snapshot taken on this UTC day, or None if there is none."""
        start = datetime.combine(day, time.min, tzinfo=UTC)
        first = (
            select(BalanceSnapshot.snapshot_id)
            .where(BalanceSnapshot.taken_at >= start, BalanceSnapshot.taken_at < start + timedelta(days=1))
            .order_by(col(BalanceSnapshot.taken_at), col(BalanceSnapshot.id))
            .limit(1)
        )
        with self._transaction() as session:
            snapshot_id = session.exec(first).first()
            if snapshot_id is None:
                return None
            values = session.exec(
                select(col(BalanceSnapshot.value_quote)).where(BalanceSnapshot.snapshot_id == snapshot_id)
            ).all()
        return sum(values, Decimal(0))

    # --- incidents and checklists ------------------------------------------------------------------------------

    def open_incident(self, fingerprint: str, severity: str, title: str, detail: str, source: str, at: datetime) -> int:
        """Open an incident, or refresh the open one with the same fingerprint; returns its id."""
        _require("incident severity", severity, get_args(Severity))
        with self._transaction() as session:
            row = self._open_incident_rows(session, fingerprint).first()
            if row is None:
                row = Incident(
                    fingerprint=fingerprint,
                    severity=severity,
                    title=title,
                    detail=detail,
                    source=source,
                    status="open",
                    opened_at=at,
                    updated_at=at,
                )
                session.add(row)
            else:
                row.detail = detail
                row.updated_at = at
            session.flush()
            assert row.id is not None
            return row.id

    def resolve_incident(self, fingerprint: str, at: datetime) -> bool:
        """Resolve the open incident with this fingerprint; False if none was open."""
        with self._transaction() as session:
            rows = self._open_incident_rows(session, fingerprint).all()
            for row in rows:
                row.status = "resolved"
                row.resolved_at = at
                row.updated_at = at
        return bool(rows)

    def mark_incident_notified(self, incident_id: int, slack_ts: str | None = None) -> None:
        """Record that the operator was told about this incident (and the Slack message, if any)."""
        with self._transaction() as session:
            row = session.get(Incident, incident_id)
            if row is None:
                raise LedgerError(f"no incident {incident_id} in the ledger")
            row.notified = True
            row.slack_ts = slack_ts or row.slack_ts

    def open_incidents(self) -> list[Incident]:
        """Incidents not yet resolved, oldest first."""
        query = select(Incident).where(Incident.status == "open").order_by(col(Incident.opened_at), col(Incident.id))
        with self._transaction() as session:
            return list(session.exec(query).all())

    @staticmethod
    def _open_incident_rows(session: Session, fingerprint: str) -> Any:
        query = select(Incident).where(Incident.fingerprint == fingerprint, Incident.status == "open")
        return session.exec(query.order_by(col(Incident.id)))

    def record_checklist_run(
        self,
        checklist: str,
        status: str,
        results: list[dict[str, Any]],
        started_at: datetime,
        finished_at: datetime | None,
        flow_run_id: str | None = None,
    ) -> int:
        """Store one run of an operations checklist with its per-check results; returns its id."""
        _require("checklist status", status, get_args(ChecklistStatus))
        row = ChecklistRun(
            checklist=checklist,
            flow_run_id=flow_run_id,
            started_at=started_at,
            finished_at=finished_at,
            status=status,
            results_json=json.dumps(results, default=str),
        )
        with self._transaction() as session:
            session.add(row)
            session.flush()
            assert row.id is not None
            return row.id

    def checklist_runs(self, checklist: str | None = None) -> list[ChecklistRun]:
        """Stored checklist runs, all or of one checklist, newest first."""
        query = select(ChecklistRun).order_by(col(ChecklistRun.started_at).desc(), col(ChecklistRun.id).desc())
        if checklist is not None:
            query = query.where(ChecklistRun.checklist == checklist)
        with self._transaction() as session:
            return list(session.exec(query).all())

    # --- the account lease (one active bot per account; trader/ledger/lease.py) -----------------------------------

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def acquire_lease(
        self,
        account: str,
        holder: Holder,
        ttl_seconds: float,
        *,
        holder_gone: Callable[[LeaseInfo], bool] | None = None,
    ) -> LeaseInfo:
        """Take the account's lease (free, expired, or its holder proven gone); LeaseHeld otherwise, with nothing
        written."""
        return lease.acquire(self._session, account, holder, ttl_seconds, holder_gone=holder_gone)

    def renew_lease(self, fence: Fence, ttl_seconds: float) -> LeaseInfo:
        """Extend the lease by its TTL from now; LeaseLost when fence's token is no longer current."""
        return lease.renew(self._session, fence, ttl_seconds)

    def release_lease(self, fence: Fence, note: str = "") -> bool:
        """Expire this holder's lease now so a standby or a restart can take it at once; False if not current."""
        return lease.expire(self._session, fence, "released", "holder", note)

    def break_lease(self, account: str, token: int, reason: str) -> bool:
        """Expire the lease iff `token` is still current (its holder is known dead); False otherwise."""
        return lease.expire(self._session, Fence(account, token), "broken", "supervisor", reason)

    def override_lease(
        self, account: str, holder: Holder, ttl_seconds: float, reason: str
    ) -> tuple[LeaseInfo, LeaseInfo | None]:
        """An operator's emergency command takes the lease from whoever holds it (recorded); (new, replaced)."""
        return lease.override(self._session, account, holder, ttl_seconds, reason)

    def check_lease(self, fence: Fence) -> None:
        """LeaseLost unless fence's token is the account's current unexpired lease (before an unrecorded write)."""
        with self._transaction() as session:
            lease.check_fence(session, fence, _now())

    def current_lease(self, account: str) -> LeaseInfo | None:
        """The account's lease row (held, or expired), or None if no bot ever held it."""
        return lease.current(self._session, account)

    def lease_history(self, account: str, limit: int = 50) -> list[LeaseEvent]:
        """The newest `limit` lease events of the account, oldest first."""
        return lease.history(self._session, account, limit)

    # --- housekeeping ------------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        with self._transaction() as session:
            return {name: session.exec(select(func.count()).select_from(table)).one() for name, table in TABLES.items()}

    def dispose(self) -> None:
        """Close every pooled database connection."""
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.dispose()


def _new_order_row(order: OrderRequest | Order, **fields: Any) -> OrderRecord:
    """An orders row from what the bot asked for or what the broker reports (the fields both carry)."""
    return OrderRecord(
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=str(order.side),
        order_type=str(order.order_type),
        time_in_force=str(order.time_in_force),
        quantity=order.quantity,
        limit_price=order.limit_price,
        stop_price=order.stop_price,
        expire_at=order.expire_at,
        reduce_only=order.reduce_only,
        **fields,
    )


def _fill_row(fill: Fill, session_id: str | None) -> FillRecord:
    return FillRecord(
        trade_id=fill.trade_id,
        exchange_order_id=fill.order_id,
        client_order_id=fill.client_order_id,
        symbol=fill.symbol,
        side=str(fill.side),
        quantity=fill.quantity,
        price=fill.price,
        fee=fill.fee,
        liquidity=str(fill.liquidity),
        filled_at=fill.filled_at,
        session_id=session_id,
    )
