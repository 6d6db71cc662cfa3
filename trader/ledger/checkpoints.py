"""The Ledger's checkpoints table (the warm copy of trader/state/checkpoints.py's snapshots) and the one consistent
read of positions and open orders a snapshot is made of; each of the Ledger's account."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from trader.ledger.base import OPEN_STATUSES, LedgerBase
from trader.ledger.models import Checkpoint, OrderRecord, PositionRecord


@dataclass(frozen=True)
class Book:
    """Positions (every row, zero ones included) and open orders as of one moment."""

    positions: list[PositionRecord]
    open_orders: list[OrderRecord]


class CheckpointsMixin(LedgerBase):
    def book(self) -> Book:
        """Positions by symbol and open orders by creation, read from one snapshot of the database (REPEATABLE READ
        on PostgreSQL, one read transaction on SQLite), so a fill between the two reads cannot split them."""
        with self._consistent_read() as session:
            positions = list(
                session.exec(
                    select(PositionRecord)
                    .where(PositionRecord.account == self.account)
                    .order_by(col(PositionRecord.symbol))
                ).all()
            )
            orders = session.exec(
                select(OrderRecord)
                .where(OrderRecord.account == self.account, col(OrderRecord.status).in_(OPEN_STATUSES))
                .order_by(col(OrderRecord.created_at), col(OrderRecord.client_order_id))
            ).all()
            return Book(positions, list(orders))

    def add_checkpoint(self, row: Checkpoint) -> None:
        """Store one checkpoint (its payload included) as the Ledger's account's."""
        row.account = self.account
        with self._transaction() as session:
            session.add(row)

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, newest first."""
        with self._transaction() as session:
            return list(session.exec(_newest_first(self.account)).all())

    def get_checkpoint(self, checkpoint_id: str) -> Checkpoint | None:
        """The checkpoint with this id, or None."""
        with self._transaction() as session:
            row = session.get(Checkpoint, checkpoint_id)
        return row if row is not None and row.account == self.account else None

    def prune_checkpoints(self, keep: int) -> list[Checkpoint]:
        """Delete every checkpoint of the account but its newest `keep`; returns the deleted ones (for their cold
        copies)."""
        with self._transaction() as session:
            old = list(session.exec(_newest_first(self.account).offset(keep)).all())
            for row in old:
                session.delete(row)
        return old


def _newest_first(account: str) -> SelectOfScalar[Checkpoint]:
    query = select(Checkpoint).where(Checkpoint.account == account)
    return query.order_by(col(Checkpoint.created_at).desc(), col(Checkpoint.id).desc())
