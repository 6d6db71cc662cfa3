"""The Ledger's fills and the positions they build (average-cost accounting); a trade id names a fill within the
Ledger's account, and a position is the account's holding of one symbol."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext

from sqlalchemy import bindparam, insert, update
from sqlmodel import Session, col, func, select

from trader.domain import Fill, Position, Side
from trader.ledger.base import LedgerBase
from trader.ledger.mappers import fill_values, position_of
from trader.ledger.models import FillRecord, PositionRecord
from trader.ledger.types import canonical_decimal


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
            position.realized_pnl += (
                (fill.price - position.average_entry_price) * closed * direction * fill.contract_size
            )
            if abs(signed) > abs(held):  # crossed through zero: the remainder opens at the fill price
                position.average_entry_price = fill.price
        position.quantity = held + signed
        if position.quantity == 0:
            position.average_entry_price = Decimal(0)
    position.realized_pnl = canonical_decimal(position.realized_pnl)
    position.updated_at = fill.filled_at


# Fills are recorded on the bot's hot path (every order that fills): prebuilt statements on the session's connection,
# with no ORM rows loaded or flushed. The trade id, unique per account, dedupes; the account's positions are read,
# moved and written back. The account's parameter is not named `account`: an UPDATE would SET a key named after a
# column.
_FILLS = FillRecord.__table__  # type: ignore[attr-defined]
_POSITIONS = PositionRecord.__table__  # type: ignore[attr-defined]
_SEEN = select(_FILLS.c.trade_id).where(
    _FILLS.c.account == bindparam("of_account"), _FILLS.c.trade_id.in_(bindparam("ids", expanding=True))
)
_POSITIONS_OF = select(_POSITIONS).where(
    _POSITIONS.c.account == bindparam("of_account"), _POSITIONS.c.symbol.in_(bindparam("symbols", expanding=True))
)
_MOVE_POSITION = update(_POSITIONS).where(
    _POSITIONS.c.account == bindparam("of_account"), _POSITIONS.c.symbol == bindparam("key")
)
_INSERT_FILLS = insert(_FILLS)
_INSERT_POSITION = insert(_POSITIONS)


@dataclass(frozen=True)
class FillsRecorded:
    """How many of the fills handed to the ledger were new, and the quantity of each position they moved."""

    new: int = 0
    positions: dict[str, Decimal] = field(default_factory=dict)


def insert_fills(session: Session, fills: list[Fill], session_id: str | None, account: str) -> FillsRecorded:
    """Inside the caller's transaction: the account's fills with new trade ids, and the account's positions they
    move."""
    if not fills:
        return FillsRecorded()
    connection = session.connection()
    ids = list({fill.trade_id for fill in fills})
    seen = set(connection.execute(_SEEN, {"of_account": account, "ids": ids}).scalars())
    new: list[Fill] = []
    for fill in sorted(fills, key=lambda f: f.filled_at):
        if fill.trade_id not in seen:
            seen.add(fill.trade_id)
            new.append(fill)
    if not new:
        return FillsRecorded()
    connection.execute(_INSERT_FILLS, [fill_values(fill, session_id, account) for fill in new])
    symbols = list({fill.symbol for fill in new})
    rows = connection.execute(_POSITIONS_OF, {"of_account": account, "symbols": symbols})
    held = {row.symbol: PositionRecord(**row._mapping) for row in rows}
    positions = {symbol: held.get(symbol) or PositionRecord(account=account, symbol=symbol) for symbol in symbols}
    for fill in new:
        _apply_fill(positions[fill.symbol], fill)
    for symbol, position in positions.items():
        values = position.model_dump()
        if symbol in held:
            values["key"], values["of_account"] = values.pop("symbol"), values.pop("account")
            connection.execute(_MOVE_POSITION, values)
        else:
            connection.execute(_INSERT_POSITION, values)
    moved = {symbol: canonical_decimal(position.quantity) for symbol, position in positions.items()}
    return FillsRecorded(len(new), moved)  # quantities as the ledger stores them


class FillsMixin(LedgerBase):
    def record_fills(self, fills: list[Fill], session_id: str | None = None) -> int:
        """Insert fills with new trade ids and update positions from them; returns how many were new."""
        if not fills:
            return 0
        with self._transaction() as session:
            return insert_fills(session, fills, session_id, self.account).new

    def list_fills(self, session_id: str | None = None) -> list[FillRecord]:
        """Every fill, or those of one trading session, in execution order."""
        query = select(FillRecord).where(FillRecord.account == self.account)
        query = query.order_by(col(FillRecord.filled_at), col(FillRecord.id))
        if session_id is not None:
            query = query.where(FillRecord.session_id == session_id)
        with self._transaction() as session:
            return list(session.exec(query).all())

    def fills_after(self, at: datetime) -> list[FillRecord]:
        """The fills executed strictly after `at`, in execution order."""
        query = select(FillRecord).where(FillRecord.account == self.account, col(FillRecord.filled_at) > at)
        with self._transaction() as session:
            return list(session.exec(query.order_by(col(FillRecord.filled_at), col(FillRecord.id))).all())

    def fills_by_trade_id(self, trade_ids: Iterable[str]) -> dict[str, FillRecord]:
        """The fills with these trade ids the ledger has, by trade id (one query)."""
        ids = list(trade_ids)
        if not ids:
            return {}
        with self._transaction() as session:
            query = select(FillRecord).where(FillRecord.account == self.account, col(FillRecord.trade_id).in_(ids))
            rows = session.exec(query).all()
        return {row.trade_id: row for row in rows}

    def fill_times_among(self, times: Iterable[datetime]) -> set[datetime]:
        """Which of these moments some recorded fill executed at."""
        moments = list(times)
        if not moments:
            return set()
        query = select(FillRecord.filled_at).where(
            FillRecord.account == self.account, col(FillRecord.filled_at).in_(moments)
        )
        with self._transaction() as session:
            return set(session.exec(query).all())

    def last_fill_time(self) -> datetime | None:
        """When the newest recorded fill executed, or None before the first fill."""
        with self._transaction() as session:
            query = select(func.max(FillRecord.filled_at)).where(FillRecord.account == self.account)
            return session.exec(query).one()

    def positions(self) -> dict[str, Position]:
        """Non-zero positions by symbol."""
        with self._transaction() as session:
            rows = session.exec(select(PositionRecord).where(PositionRecord.account == self.account)).all()
        return {row.symbol: position_of(row) for row in rows if row.quantity != 0}

    def realized_pnl(self, symbol: str) -> Decimal:
        """Realized PnL of a product net of every fee, in its quote currency; 0 if never traded."""
        with self._transaction() as session:
            row = session.get(PositionRecord, (self.account, symbol))
        return row.realized_pnl if row is not None else Decimal(0)

    def set_position(self, symbol: str, quantity: Decimal, average_entry_price: Decimal, at: datetime) -> None:
        """Overwrite a position with the broker's truth (reconciliation); realized PnL is kept."""
        with self._transaction() as session:
            key = (self.account, symbol)  # the primary key's order: (account, symbol)
            row = session.get(PositionRecord, key) or PositionRecord(account=self.account, symbol=symbol, updated_at=at)
            row.quantity = quantity
            row.average_entry_price = average_entry_price
            row.updated_at = at
            session.add(row)
