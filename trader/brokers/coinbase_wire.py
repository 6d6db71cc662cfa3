"""Coinbase Advanced Trade's JSON and the domain types, both ways: products (a future's terms and funding), order
configurations, orders (REST and the user channel), previews, futures positions. Pure functions: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from trader.brokers.coinbase_futures import futures_terms
from trader.brokers.rules import fmt
from trader.domain import (
    FuturesPosition,
    Order,
    OrderPreview,
    OrderRequest,
    OrderStatus,
    OrderType,
    Product,
    Side,
    TimeInForce,
)

ZERO = Decimal(0)
STATUSES = {
    "OPEN": OrderStatus.OPEN,
    "PENDING": OrderStatus.OPEN,
    "QUEUED": OrderStatus.OPEN,
    "CANCEL_QUEUED": OrderStatus.OPEN,
    "EDIT_QUEUED": OrderStatus.OPEN,
    "UNKNOWN_ORDER_STATUS": OrderStatus.OPEN,
    "FILLED": OrderStatus.FILLED,
    "CANCELLED": OrderStatus.CANCELLED,
    "EXPIRED": OrderStatus.EXPIRED,
    "FAILED": OrderStatus.REJECTED,
}


# --- JSON <-> domain -----------------------------------------------------------------------------------------------


def money(value: Any) -> Decimal:
    """{"value": "1.5", "currency": "USD"} or a bare number as a Decimal; missing is 0."""
    if isinstance(value, dict):
        value = value.get("value")
    return Decimal(str(value)) if value not in (None, "") else ZERO


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def product_from(data: dict[str, Any]) -> Product:
    disabled = bool(
        data.get("trading_disabled")
        or data.get("is_disabled")
        or data.get("cancel_only")
        or str(data.get("status", "online")).lower() not in ("online", "")
    )
    symbol = str(data["product_id"])
    base, _, quote = symbol.partition("-")
    quote = str(data.get("quote_currency_id") or quote)
    return Product(
        symbol=symbol,
        base_currency=str(data.get("base_currency_id") or base),
        quote_currency=quote,
        base_increment=Decimal(str(data["base_increment"])),
        quote_increment=Decimal(str(data.get("price_increment") or data["quote_increment"])),
        base_min_size=Decimal(str(data["base_min_size"])),
        base_max_size=Decimal(str(data["base_max_size"])),
        quote_min_size=Decimal(str(data.get("quote_min_size") or 0)),
        trading_disabled=disabled,
        status=product_status(data),
        futures=futures_terms(data, quote),
        **funding_of(data),
    )


def funding_of(data: dict[str, Any]) -> dict[str, Any]:
    """A perpetual-style future's funding rate and time (perpetual_details first, then the product's own)."""
    details = data.get("future_product_details") or {}
    perpetual = details.get("perpetual_details") or {}
    rate = perpetual.get("funding_rate") or details.get("funding_rate")
    when = perpetual.get("funding_time") or details.get("funding_time")
    return {
        "funding_rate": Decimal(str(rate)) if rate not in (None, "") else None,
        "funding_time": parse_time(str(when)) if when else None,
    }


def product_status(data: dict[str, Any]) -> str:
    """online, or the first restriction in force: trading_disabled, cancel_only, limit_only, post_only, or the
    exchange's own status word when it is not online."""
    for flag in ("trading_disabled", "cancel_only", "limit_only", "post_only"):
        if data.get(flag) or (flag == "trading_disabled" and data.get("is_disabled")):
            return flag
    status = str(data.get("status") or "online").lower()
    return status if status != "online" else "online"


def order_configuration(request: OrderRequest) -> dict[str, dict[str, Any]]:
    """Coinbase's order_configuration for a request (base_size everywhere: the bot sizes in base units)."""
    size = fmt(request.quantity)
    end_time = iso(request.expire_at) if request.expire_at is not None else None
    gtd = request.time_in_force == TimeInForce.GTD
    if request.order_type == OrderType.MARKET:
        return {"market_market_ioc": {"base_size": size}}
    limit = fmt(request.limit_price) if request.limit_price is not None else None
    if request.order_type == OrderType.LIMIT:
        if request.time_in_force == TimeInForce.IOC:
            return {"sor_limit_ioc": {"base_size": size, "limit_price": limit}}
        if gtd:
            return {
                "limit_limit_gtd": {
                    "base_size": size,
                    "limit_price": limit,
                    "end_time": end_time,
                    "post_only": request.post_only,
                }
            }
        return {"limit_limit_gtc": {"base_size": size, "limit_price": limit, "post_only": request.post_only}}
    stop = {
        "base_size": size,
        "limit_price": limit,
        "stop_price": fmt(request.stop_price) if request.stop_price is not None else None,
        "stop_direction": "STOP_DIRECTION_STOP_UP" if request.side == Side.BUY else "STOP_DIRECTION_STOP_DOWN",
    }
    if gtd:
        return {"stop_limit_stop_limit_gtd": {**stop, "end_time": end_time}}
    return {"stop_limit_stop_limit_gtc": stop}


def from_configuration(config: dict[str, Any]) -> tuple[OrderType, TimeInForce, dict[str, Any]]:
    kind, params = next(iter(config.items())) if config else ("market_market_ioc", {})
    params = params or {}
    if kind.startswith("market"):
        return OrderType.MARKET, TimeInForce.IOC, params
    if kind.startswith("stop_limit"):
        return OrderType.STOP_LIMIT, TimeInForce.GTD if kind.endswith("gtd") else TimeInForce.GTC, params
    if kind in ("sor_limit_ioc", "limit_limit_fok"):
        return OrderType.LIMIT, TimeInForce.IOC, params
    return OrderType.LIMIT, TimeInForce.GTD if kind.endswith("gtd") else TimeInForce.GTC, params


def futures_position(raw: dict[str, Any]) -> FuturesPosition:
    side = str(raw.get("side") or "").upper()
    return FuturesPosition(
        symbol=str(raw["product_id"]),
        side="short" if side.endswith("SHORT") else "long",
        contracts=money(raw.get("number_of_contracts")),
        average_entry_price=money(raw.get("avg_entry_price")),
        current_price=money(raw.get("current_price")),
        unrealized_pnl=money(raw.get("unrealized_pnl")),
        daily_realized_pnl=money(raw.get("daily_realized_pnl")),
    )


def order_status(raw: dict[str, Any], filled: Decimal) -> OrderStatus:
    """The domain status of an order as REST or the user channel reports it; an open order with fills is partial."""
    status = STATUSES.get(str(raw.get("status", "")).upper(), OrderStatus.OPEN)
    return OrderStatus.PARTIALLY_FILLED if status == OrderStatus.OPEN and filled > 0 else status


def order_from(raw: dict[str, Any]) -> Order:
    order_type, tif, params = from_configuration(raw.get("order_configuration") or {})
    filled = Decimal(str(raw.get("filled_size") or 0))
    status = order_status(raw, filled)
    size = params.get("base_size")
    average = Decimal(str(raw.get("average_filled_price") or 0))
    quantity = Decimal(str(size)) if size not in (None, "") else filled
    if order_type == OrderType.MARKET and tif == TimeInForce.IOC:
        tif = TimeInForce.GTC  # the domain has no IOC market order; a market order is immediate anyway
    created = parse_time(str(raw["created_time"]))
    last_fill = raw.get("last_fill_time")
    end_time = params.get("end_time")
    return Order(
        order_id=str(raw["order_id"]),
        client_order_id=str(raw.get("client_order_id") or ""),
        symbol=str(raw["product_id"]),
        side=Side(str(raw["side"]).lower()),
        order_type=order_type,
        quantity=quantity,
        status=status,
        created_at=created,
        limit_price=Decimal(str(params["limit_price"])) if params.get("limit_price") else None,
        stop_price=Decimal(str(params["stop_price"])) if params.get("stop_price") else None,
        time_in_force=tif,
        expire_at=parse_time(str(end_time)) if end_time else None,
        filled_quantity=filled,
        average_fill_price=average if filled > 0 else None,
        fees=Decimal(str(raw.get("total_fees") or raw.get("fee") or 0)),
        reject_reason=(raw.get("reject_message") or raw.get("reject_reason") or None)
        if status == OrderStatus.REJECTED
        else None,
        updated_at=parse_time(str(last_fill)) if last_fill else created,
    )


def order_from_user_channel(raw: dict[str, Any]) -> Order:
    """An order as the WebSocket `user` channel reports it (cumulative_quantity, leaves_quantity, avg_price,
    total_fees), in the domain's terms; a market order's quantity is what filled plus what is left."""
    kind = str(raw.get("order_type") or "").upper().replace(" ", "_")
    order_type = {"MARKET": OrderType.MARKET, "STOP_LIMIT": OrderType.STOP_LIMIT}.get(kind, OrderType.LIMIT)
    filled = Decimal(str(raw.get("cumulative_quantity") or 0))
    leaves = Decimal(str(raw.get("leaves_quantity") or 0))
    status = order_status(raw, filled)
    average = Decimal(str(raw.get("avg_price") or 0))
    tif = {"GOOD_UNTIL_DATE_TIME": TimeInForce.GTD, "IMMEDIATE_OR_CANCEL": TimeInForce.IOC}.get(
        str(raw.get("time_in_force") or ""), TimeInForce.GTC
    )
    limit, stop = (Decimal(str(raw.get(name) or 0)) for name in ("limit_price", "stop_price"))
    return Order(
        order_id=str(raw["order_id"]),
        client_order_id=str(raw.get("client_order_id") or ""),
        symbol=str(raw["product_id"]),
        side=Side(str(raw["order_side"]).lower()),
        order_type=order_type,
        quantity=filled + leaves,
        status=status,
        created_at=parse_time(str(raw["creation_time"])),
        limit_price=limit or None,
        stop_price=stop or None,
        time_in_force=TimeInForce.GTC if order_type == OrderType.MARKET else tif,
        filled_quantity=filled,
        average_fill_price=average if filled > 0 else None,
        fees=Decimal(str(raw.get("total_fees") or 0)),
        reject_reason=str(raw.get("reject_reason") or "") or None if status == OrderStatus.REJECTED else None,
    )


def request_of(order: Order) -> OrderRequest:
    return OrderRequest(
        symbol=order.symbol,
        side=order.side,
        order_type=order.order_type,
        quantity=order.quantity,
        client_order_id=order.client_order_id,
        limit_price=order.limit_price,
        stop_price=order.stop_price,
        time_in_force=order.time_in_force,
        expire_at=order.expire_at,
    )


def edit_error(error: Any) -> str:
    if isinstance(error, dict):
        parts = [str(v) for k, v in error.items() if v and k in ("edit_failure_reason", "preview_failure_reason")]
        return " / ".join(parts) or str(error)
    return str(error)


def preview_from(
    data: dict[str, Any],
    request: OrderRequest,
    *,
    preview_id: str,
    errors: list[Any],
    order_id: str | None = None,
) -> OrderPreview:
    base_size = Decimal(str(data.get("base_size") or request.quantity))
    quote_size = Decimal(str(data.get("quote_size") or 0))
    if base_size > 0 and quote_size > 0:
        estimated = quote_size / base_size
    else:
        touch = data.get("best_ask") if request.side == Side.BUY else data.get("best_bid")
        estimated = Decimal(str(touch or request.limit_price or 0))
    return OrderPreview(
        preview_id=preview_id,
        request=request,
        estimated_price=estimated,
        quote_size=quote_size,
        base_size=base_size,
        commission=Decimal(str(data.get("commission_total") or 0)),
        errors=tuple(str(e) for e in errors),
        order_id=order_id,
    )
