"""Coinbase's product rules for an order, shared by every broker: checked before anything is sent."""

from __future__ import annotations

from datetime import datetime
from decimal import Context, Decimal, InvalidOperation

from trader.domain import OrderRequest, OrderType, Product, Side, TimeInForce, shrinks_position
from trader.errors import OrderRejected

_EXACT = Context(prec=200)  # remainders of any sane size/increment pair without rounding


def fmt(value: Decimal) -> str:
    """A Decimal in plain notation (0.00000001, never 1E-8)."""
    return format(value, "f")


def is_multiple(value: Decimal, increment: Decimal) -> bool:
    try:
        return _EXACT.remainder(value, increment) == 0
    except InvalidOperation:
        return False


def check_order(request: OrderRequest, product: Product, *, reference_price: Decimal, now: datetime) -> None:
    """Raise OrderRejected naming the product rule `request` breaks; reference_price values a market order."""
    symbol = product.symbol
    base = "contracts" if product.futures is not None else product.base_currency  # what the size counts
    if product.trading_disabled:
        raise OrderRejected(f"trading is disabled for {symbol} (trading_disabled): no orders are accepted")
    _check_order_type(request, product)
    size = request.quantity
    if not size.is_finite() or size <= 0:
        raise OrderRejected(f"order size {fmt(size)} {base} must be above 0 for {symbol}")
    if not is_multiple(size, product.base_increment):
        raise OrderRejected(
            f"order size {fmt(size)} {base} is not a multiple of base_increment "
            f"{fmt(product.base_increment)} for {symbol}"
        )
    if size < product.base_min_size:
        raise OrderRejected(
            f"order size {fmt(size)} {base} is below base_min_size {fmt(product.base_min_size)} for {symbol}"
        )
    if size > product.base_max_size:
        raise OrderRejected(
            f"order size {fmt(size)} {base} is above base_max_size {fmt(product.base_max_size)} for {symbol}"
        )
    for label, price in (("limit price", request.limit_price), ("stop price", request.stop_price)):
        if price is None:
            continue
        if not price.is_finite() or price <= 0:
            raise OrderRejected(f"{label} {fmt(price)} must be above 0 for {symbol}")
        if not is_multiple(price, product.quote_increment):
            raise OrderRejected(
                f"{label} {fmt(price)} is not a multiple of quote_increment {fmt(product.quote_increment)} for {symbol}"
            )
    _check_time_in_force(request, product, now)
    _check_leverage(request, product)
    price = request.limit_price if request.limit_price is not None else reference_price
    value = product.notional(size, price)
    if value < product.quote_min_size:
        raise OrderRejected(
            f"order value {fmt(value.normalize())} {product.quote_currency} ({fmt(size)} {base} x {fmt(price)}) "
            f"is below quote_min_size {fmt(product.quote_min_size)} for {symbol}"
        )


def _check_leverage(request: OrderRequest, product: Product) -> None:
    """Leverage is a future's: at least 1 and at most the product's max_leverage."""
    leverage = request.leverage
    if leverage is None:
        return
    symbol = product.symbol
    if product.futures is None:
        raise OrderRejected(
            f"leverage {fmt(leverage)} on {symbol}: leverage is for futures only; leave it unset for spot"
        )
    if not leverage.is_finite() or leverage < 1:
        raise OrderRejected(f"leverage {fmt(leverage)} on {symbol} must be at least 1")
    if leverage > product.futures.max_leverage:
        raise OrderRejected(
            f"leverage {fmt(leverage)} is above {symbol}'s max_leverage {fmt(product.futures.max_leverage)}"
        )


def check_reduce_only(request: OrderRequest, product: Product, held: Decimal) -> None:
    """Reduce-only: spot only a sell of at most the base quantity held; a future an order that only shrinks the
    position (contracts, negative when short)."""
    if not request.reduce_only:
        return
    if product.futures is not None:
        if not shrinks_position(request.side, request.quantity, held):
            raise OrderRejected(
                f"reduce-only {request.side} of {fmt(request.quantity)} contracts would not shrink the position "
                f"{fmt(held)} contracts of {product.symbol}"
            )
        return
    if request.side == Side.BUY:
        raise OrderRejected(
            f"reduce-only buy of {fmt(request.quantity)} {product.base_currency} is rejected for "
            f"{product.symbol}: spot has no short position to reduce"
        )
    if request.quantity > held:
        raise OrderRejected(
            f"reduce-only sell of {fmt(request.quantity)} {product.base_currency} exceeds position "
            f"{fmt(held)} {product.base_currency} for {product.symbol}"
        )


def _check_order_type(request: OrderRequest, product: Product) -> None:
    kind, symbol = request.order_type, product.symbol
    if kind == OrderType.MARKET and request.limit_price is not None:
        raise OrderRejected(
            f"limit price {fmt(request.limit_price)} is not allowed on a market order for {symbol}; use a limit order"
        )
    if kind in (OrderType.LIMIT, OrderType.STOP_LIMIT) and request.limit_price is None:
        raise OrderRejected(f"limit_price is missing: a {kind} order needs a limit price for {symbol}")
    if kind == OrderType.STOP_LIMIT and request.stop_price is None:
        raise OrderRejected(f"stop_price is missing: a stop_limit order needs a stop price for {symbol}")
    if kind != OrderType.STOP_LIMIT and request.stop_price is not None:
        raise OrderRejected(
            f"stop price {fmt(request.stop_price)} is only for stop_limit orders, not {kind}, for {symbol}"
        )
    if request.post_only and kind != OrderType.LIMIT:
        raise OrderRejected(f"post_only is only for limit orders, not {kind}, for {symbol}")


def _check_time_in_force(request: OrderRequest, product: Product, now: datetime) -> None:
    tif, kind, symbol = request.time_in_force, request.order_type, product.symbol
    if tif == TimeInForce.IOC and kind != OrderType.LIMIT:
        raise OrderRejected(f"time_in_force IOC is only for limit orders, not {kind}, for {symbol}")
    if tif == TimeInForce.IOC and request.post_only:
        raise OrderRejected(f"post_only cannot be combined with time_in_force IOC for {symbol}")
    if tif == TimeInForce.GTD:
        if kind == OrderType.MARKET:
            raise OrderRejected(f"time_in_force GTD is only for limit and stop_limit orders, not market, for {symbol}")
        if request.expire_at is None:
            raise OrderRejected(f"expire_at is missing: time_in_force GTD needs expire_at for {symbol}")
        if request.expire_at.tzinfo is None:
            raise OrderRejected(f"expire_at {request.expire_at.isoformat()} has no time zone; give it in UTC")
        if request.expire_at <= now:
            raise OrderRejected(
                f"expire_at {request.expire_at.isoformat()} is not after the broker time {now.isoformat()} "
                f"(GTD) for {symbol}"
            )
