"""The Ledger's balance snapshots: every currency of the Ledger's account, valued in the quote currency, at one
moment."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from sqlalchemy import insert
from sqlmodel import col, select

from trader.domain import Balance
from trader.ledger.base import LedgerBase
from trader.ledger.models import BalanceSnapshot

_INSERT = insert(BalanceSnapshot.__table__)  # type: ignore[attr-defined]


class BalancesMixin(LedgerBase):
    def record_balance_snapshot(
        self, session_id: str | None, balances: list[Balance], prices: dict[str, Decimal], taken_at: datetime
    ) -> str:
        """Store every balance valued in the quote currency (price 1 for the quote itself); returns the snapshot id."""
        snapshot_id = uuid.uuid4().hex
        rows = []
        for balance in balances:
            price = prices.get(balance.currency, Decimal(0))
            rows.append(
                {
                    "account": self.account,
                    "snapshot_id": snapshot_id,
                    "session_id": session_id,
                    "taken_at": taken_at,
                    "currency": balance.currency,
                    "available": balance.available,
                    "hold": balance.hold,
                    "price_quote": price,
                    "value_quote": balance.total * price,
                }
            )
        if rows:  # the bot snapshots every few minutes of its cycle: one prebuilt multi-row insert, no ORM rows
            with self._transaction() as session:
                session.connection().execute(_INSERT, rows)
        return snapshot_id

    def equity_at_start_of_day(self, day: date) -> Decimal | None:
        """Total quote value of the first snapshot taken on this UTC day, or None if there is none."""
        start = datetime.combine(day, time.min, tzinfo=UTC)
        first = (
            select(BalanceSnapshot.snapshot_id)
            .where(
                BalanceSnapshot.account == self.account,
                BalanceSnapshot.taken_at >= start,
                BalanceSnapshot.taken_at < start + timedelta(days=1),
            )
            .order_by(col(BalanceSnapshot.taken_at), col(BalanceSnapshot.id))
            .limit(1)
        )
        with self._transaction() as session:
            snapshot_id = session.exec(first).first()
            if snapshot_id is None:
                return None
            values = session.exec(
                select(col(BalanceSnapshot.value_quote)).where(
                    BalanceSnapshot.account == self.account, BalanceSnapshot.snapshot_id == snapshot_id
                )
            ).all()
        return sum(values, Decimal(0))

    def balance_snapshot(self, snapshot_id: str) -> list[BalanceSnapshot]:
        """The rows (one per currency) of one balance snapshot."""
        query = select(BalanceSnapshot).where(
            BalanceSnapshot.account == self.account, BalanceSnapshot.snapshot_id == snapshot_id
        )
        with self._transaction() as session:
            return list(session.exec(query.order_by(col(BalanceSnapshot.id))).all())

    def balance_snapshots_between(self, start: datetime, end: datetime) -> list[BalanceSnapshot]:
        """The rows of every balance snapshot taken in [start, end), in the order they were taken."""
        query = select(BalanceSnapshot).where(
            BalanceSnapshot.account == self.account,
            col(BalanceSnapshot.taken_at) >= start,
            col(BalanceSnapshot.taken_at) < end,
        )
        with self._transaction() as session:
            return list(session.exec(query.order_by(col(BalanceSnapshot.taken_at), col(BalanceSnapshot.id))).all())

    def balance_snapshots_around(self, at: datetime, limit: int) -> list[tuple[str, datetime]]:
        """(snapshot id, taken_at) of up to `limit` snapshots taken at or before `at`, newest first, then of up to
        `limit` taken after it, oldest first."""
        moment = (BalanceSnapshot.snapshot_id, BalanceSnapshot.taken_at)
        older = (
            select(*moment)
            .where(BalanceSnapshot.account == self.account, col(BalanceSnapshot.taken_at) <= at)
            .distinct()
            .order_by(col(BalanceSnapshot.taken_at).desc())
            .limit(limit)
        )
        newer = (
            select(*moment)
            .where(BalanceSnapshot.account == self.account, col(BalanceSnapshot.taken_at) > at)
            .distinct()
            .order_by(col(BalanceSnapshot.taken_at))
            .limit(limit)
        )
        with self._transaction() as session:
            rows = list(session.exec(older).all()) + list(session.exec(newer).all())
        return [(snapshot_id, taken_at) for snapshot_id, taken_at in rows]
