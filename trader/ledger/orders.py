"""The Ledger's orders: recorded before they are sent, then kept to the broker's view of them; a client_order_id
names an order within the Ledger's account (another account may use the same one)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, bindparam, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, or_, select

from trader.domain import Fill, Order, OrderRequest, OrderStatus
from trader.ledger import lease
from trader.ledger.base import OPEN_STATUSES, DuplicateClientOrderId, LedgerBase, LedgerError, now
from trader.ledger.fills import FillsRecorded, insert_fills
from trader.ledger.lease import Fence
from trader.ledger.mappers import order_row, order_values
from trader.ledger.models import OrderRecord


class OrdersMixin(LedgerBase):
    def record_pending(
        self, request: OrderRequest, session_id: str | None, at: datetime, *, fence: Fence | None = None
    ) -> None:
        """Record an order before it is sent (pending_submit); refuses a client_order_id already used, and, with a
        fence, a writer whose lease token is not the account's current unexpired one (LeaseLost), in the same
        transaction."""
        # Every column, as the ORM would write them (defaults included): a prebuilt insert on the order hot path.
        row = order_values(
            request,
            account=self.account,
            session_id=session_id,
            status=OrderStatus.PENDING_SUBMIT.value,
            created_at=at,
            updated_at=at,
            fencing_token=fence.token if fence is not None else None,
            exchange_order_id=None,
            filled_quantity=Decimal(0),
            average_fill_price=None,
            fees=Decimal(0),
            reject_reason=None,
        )
        duplicate = DuplicateClientOrderId(
            f"client_order_id {request.client_order_id} is already in the ledger for account {self.account}"
        )
        try:
            with self._transaction() as session:
                if fence is not None:
                    lease.check_fence(session, fence, now())
                session.connection().execute(_INSERT, row)
        except IntegrityError as error:  # unique (account, client_order_id): used before, or by a concurrent writer
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
            _apply(session, self.account, orders)

    def apply_order_with_fills(self, order: Order, fills: list[Fill], session_id: str | None) -> FillsRecorded:
        """The broker's answer to an order just sent and that order's fills so far, in one transaction (the order
        path: one commit instead of two); how many fills were new and the positions they moved."""
        with self._transaction() as session:
            _apply(session, self.account, [order])
            return insert_fills(session, fills, session_id, self.account)

    def apply_order_terms(self, order: Order) -> None:
        """Take the broker's size, limit and stop price of a known order after an edit on the exchange (apply_order
        keeps the ones the bot requested)."""
        with self._transaction() as session:
            row = _order_row(session, self.account, order.client_order_id)
            if row is None:
                raise LedgerError(self._no_order(order.client_order_id))
            row.quantity = order.quantity
            row.limit_price = order.limit_price
            row.stop_price = order.stop_price

    def mark_failed(self, client_order_id: str, reason: str, at: datetime) -> None:
        """Mark an order that never reached the broker as failed, with the reason."""
        with self._transaction() as session:
            row = _order_row(session, self.account, client_order_id)
            if row is None:
                raise LedgerError(self._no_order(client_order_id))
            row.status = OrderStatus.FAILED.value
            row.reject_reason = reason
            row.updated_at = at

    def open_orders(self) -> list[OrderRecord]:
        """Orders not yet terminal: pending_submit, open, partially_filled."""
        return self.orders_to_reconcile()

    def orders_to_reconcile(self, changed_since: datetime | None = None) -> list[OrderRecord]:
        """Orders not yet terminal, and with changed_since also every order the broker acknowledged that changed
        since then (a reconciliation window), oldest first."""
        still_open = col(OrderRecord.status).in_(OPEN_STATUSES)
        where: ColumnElement[bool] = still_open
        if changed_since is not None:
            changed = col(OrderRecord.exchange_order_id).is_not(None) & (col(OrderRecord.updated_at) >= changed_since)
            where = or_(still_open, changed)
        with self._transaction() as session:
            query = select(OrderRecord).where(OrderRecord.account == self.account, where)
            return list(session.exec(query.order_by(col(OrderRecord.id))).all())

    def get_order(self, client_order_id: str) -> OrderRecord | None:
        """The order with this client_order_id, or None."""
        with self._transaction() as session:
            return _order_row(session, self.account, client_order_id)

    def orders_by_client_id(self, client_order_ids: Iterable[str]) -> dict[str, OrderRecord]:
        """The orders with these client_order_ids the ledger has, by client_order_id (one query)."""
        ids = list(client_order_ids)
        if not ids:
            return {}
        with self._transaction() as session:
            return _order_rows(session, self.account, ids)

    def list_orders(self, session_id: str | None = None) -> list[OrderRecord]:
        """Every order, or those of one trading session, oldest first."""
        query = select(OrderRecord).where(OrderRecord.account == self.account).order_by(col(OrderRecord.id))
        if session_id is not None:
            query = query.where(OrderRecord.session_id == session_id)
        with self._transaction() as session:
            return list(session.exec(query).all())

    def orders_created_between(self, start: datetime, end: datetime) -> list[OrderRecord]:
        """The orders created in [start, end), oldest first."""
        query = select(OrderRecord).where(
            OrderRecord.account == self.account, col(OrderRecord.created_at) >= start, col(OrderRecord.created_at) < end
        )
        with self._transaction() as session:
            return list(session.exec(query.order_by(col(OrderRecord.id))).all())

    def _no_order(self, client_order_id: str) -> str:
        return f"no order with client_order_id {client_order_id} in the ledger for account {self.account}"


# The broker's answer is applied on the bot's hot path (every order): one prebuilt UPDATE by (account,
# client_order_id) on the session's connection, no row loaded; the rare order the ledger never saw (found on the
# broker) is inserted. The account's parameter is not named `account`: a key named after a column would be SET too.
_ORDERS = OrderRecord.__table__  # type: ignore[attr-defined]
_INSERT = insert(_ORDERS)
_UPDATE_BY_CLIENT_ID = update(_ORDERS).where(
    _ORDERS.c.account == bindparam("of_account"), _ORDERS.c.client_order_id == bindparam("key")
)


def _apply(session: Session, account: str, orders: list[Order]) -> None:
    connection = session.connection()
    for order in orders:
        answer = {
            "of_account": account,
            "key": order.client_order_id,
            "status": str(order.status),
            "filled_quantity": order.filled_quantity,
            "average_fill_price": order.average_fill_price,
            "fees": order.fees,
            "reject_reason": order.reject_reason,
            "updated_at": order.updated_at or order.created_at,
        }
        if order.order_id:  # an answer without the exchange's id keeps the one recorded
            answer["exchange_order_id"] = order.order_id
        if connection.execute(_UPDATE_BY_CLIENT_ID, answer).rowcount == 0:
            fields = {name: value for name, value in answer.items() if name not in ("key", "of_account")}
            fields.setdefault("exchange_order_id", None)
            session.add(order_row(order, account=account, created_at=order.created_at, **fields))
            session.flush()


def _order_row(session: Session, account: str, client_order_id: str) -> OrderRecord | None:
    query = select(OrderRecord).where(OrderRecord.account == account, OrderRecord.client_order_id == client_order_id)
    return session.exec(query).first()


def _order_rows(session: Session, account: str, client_order_ids: list[str]) -> dict[str, OrderRecord]:
    query = select(OrderRecord).where(
        OrderRecord.account == account, col(OrderRecord.client_order_id).in_(client_order_ids)
    )
    return {row.client_order_id: row for row in session.exec(query).all()}
