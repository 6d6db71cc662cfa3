"""The one place ledger records become domain objects (trader/domain.py) and domain objects become records.

Only the ledger's own rows and the domain's types meet here; a broker maps its wire format to the domain itself
(trader/brokers/), and packages above the ledger build their own views of a row (an incident notice, a
checkpoint's info) beside those views.
"""

from __future__ import annotations

from typing import Any

from trader.domain import Fill, Liquidity, Order, OrderRequest, OrderStatus, OrderType, Position, Side, TimeInForce
from trader.ledger.models import FillRecord, OrderRecord, PositionRecord


def order_values(order: OrderRequest | Order, **fields: Any) -> dict[str, Any]:
    """An orders row's columns from what the bot asked for or what the broker reports (the fields both carry)."""
    return {
        "client_order_id": order.client_order_id,
        "symbol": order.symbol,
        "side": str(order.side),
        "order_type": str(order.order_type),
        "time_in_force": str(order.time_in_force),
        "quantity": order.quantity,
        "limit_price": order.limit_price,
        "stop_price": order.stop_price,
        "expire_at": order.expire_at,
        "reduce_only": order.reduce_only,
        **fields,
    }


def order_row(order: OrderRequest | Order, **fields: Any) -> OrderRecord:
    """An orders row from what the bot asked for or what the broker reports (the fields both carry)."""
    return OrderRecord(**order_values(order, **fields))


def order_of(row: OrderRecord) -> Order:
    """The order as the ledger last saw it (order_id "" when the broker never acknowledged it)."""
    return Order(
        order_id=row.exchange_order_id or "",
        client_order_id=row.client_order_id,
        symbol=row.symbol,
        side=Side(row.side),
        order_type=OrderType(row.order_type),
        quantity=row.quantity,
        status=OrderStatus(row.status),
        created_at=row.created_at,
        limit_price=row.limit_price,
        stop_price=row.stop_price,
        time_in_force=TimeInForce(row.time_in_force),
        expire_at=row.expire_at,
        reduce_only=row.reduce_only,
        filled_quantity=row.filled_quantity,
        average_fill_price=row.average_fill_price,
        fees=row.fees,
        reject_reason=row.reject_reason,
        updated_at=row.updated_at,
    )


def fill_values(fill: Fill, session_id: str | None, account: str) -> dict[str, Any]:
    """A fills row's columns for a fill of the account's trading session (None: imported from the broker)."""
    return {
        "account": account,
        "trade_id": fill.trade_id,
        "exchange_order_id": fill.order_id,
        "client_order_id": fill.client_order_id,
        "symbol": fill.symbol,
        "side": str(fill.side),
        "quantity": fill.quantity,
        "price": fill.price,
        "fee": fill.fee,
        "liquidity": str(fill.liquidity),
        "filled_at": fill.filled_at,
        "session_id": session_id,
        "contract_size": fill.contract_size,
    }


def fill_of(row: FillRecord) -> Fill:
    """The fill a fills row records."""
    return Fill(
        trade_id=row.trade_id,
        order_id=row.exchange_order_id,
        client_order_id=row.client_order_id,
        symbol=row.symbol,
        side=Side(row.side),
        quantity=row.quantity,
        price=row.price,
        fee=row.fee,
        liquidity=Liquidity(row.liquidity),
        filled_at=row.filled_at,
        contract_size=row.contract_size,
    )


def position_of(row: PositionRecord) -> Position:
    """The position a positions row holds (its realized PnL stays in the ledger: Ledger.realized_pnl)."""
    return Position(row.symbol, row.quantity, row.average_entry_price)
