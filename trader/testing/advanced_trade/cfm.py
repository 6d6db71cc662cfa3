"""US futures (CFM) orders on the Advanced Trade test server: the perpetual-style futures it lists
(`set_futures_product`) take market IOC and limit IOC orders, which fill at once, whole, at the product's price.

Invariant: a CFM position follows trader/brokers/futures.py's arithmetic (the paper exchange's). A fill in the
position's direction re-averages its entry; one against it closes contracts at their entry and realizes
(price - entry) x closed x contract size into the day's realized PnL and the futures cash, and whatever is left
opens the other side at the fill price. A position closed flat stays on record with 0 contracts (its day's realized
PnL still counts in the balance summary) and is left out of the position endpoints. The taker fee comes out of the
futures cash. Orders and fills are kept with the spot exchange's (`_Exchange.record`), so every order endpoint and
the user channel see them.

What the server asks of a futures create, answering like a failed Coinbase create (HTTP 200, success=false,
error_response) otherwise: derivatives access (403 PERMISSION_DENIED without it, as the /cfm reads answer), a base
size in whole contracts within the product's limits, a price on its tick, leverage from 1 to the product's
max_leverage (INVALID_LEVERAGE), margin_type CROSS when given (INVALID_MARGIN_TYPE), and the initial margin of the
contracts it opens (at max(1 / leverage, the 10 % initial rate)) plus its fee within the buying power
(INSUFFICIENT_FUNDS). Every method expects the server's lock to be held.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from trader.brokers import futures as fx
from trader.domain import FuturesTerms
from trader.testing.advanced_trade.exchange import _Exchange
from trader.testing.advanced_trade.wire import (
    FUTURES_INITIAL_MARGIN_RATE,
    FUTURES_MAINTENANCE_MARGIN_RATE,
    FUTURES_MAX_CONTRACTS,
    FUTURES_MIN_CONTRACTS,
    FUTURES_PRICE_INCREMENT,
    ONE,
    ZERO,
    Fill,
    FuturesPosition,
    FuturesProduct,
    JsonObject,
    Order,
    _fmt,
    _on_increment,
    _OrderRequest,
    _parse_order_request,
    _permission_denied,
    _Rejected,
    preview_json,
)

IMMEDIATE_KINDS = ("market_market_ioc", "sor_limit_ioc")  # the futures orders the server fills
MARGIN_TYPES = ("CROSS",)
CENT = Decimal("0.01")
AVERAGE_STEP = Decimal("0.00000001")  # average entry prices are kept to 1e-8, as the paper exchange keeps them
NOT_FILLED = "Immediate order could not be filled"


def futures_terms(product: FuturesProduct) -> FuturesTerms:
    """The product in trader/brokers/futures.py's terms, at the server's own margin rates."""
    return FuturesTerms(
        contract_size=product.contract_size,
        max_leverage=product.max_leverage,
        initial_margin_rate=FUTURES_INITIAL_MARGIN_RATE,
        maintenance_margin_rate=FUTURES_MAINTENANCE_MARGIN_RATE,
    )


def signed(position: FuturesPosition | None) -> Decimal:
    if position is None:
        return ZERO
    return position.contracts if position.side == "LONG" else -position.contracts


class _FuturesOrders:
    """Futures order entry, mixed into the endpoints; `AdvancedTradeServer` supplies the state."""

    derivatives: bool
    _exchange: _Exchange
    _futures_positions: dict[str, FuturesPosition]
    _futures_products: dict[str, FuturesProduct]
    _futures_cash: Decimal

    def now(self) -> datetime:
        raise NotImplementedError

    def _futures_allowed(self) -> None:
        if not self.derivatives:
            raise _permission_denied("futures trading is not enabled for this key")

    def _open_futures_positions(self) -> list[FuturesPosition]:
        return [p for p in self._futures_positions.values() if p.contracts > 0]

    # ---------------------------------------------------------------- order entry

    def _place_future(self, request: _OrderRequest, body: JsonObject, product: FuturesProduct) -> Order:
        """Check, then fill (or cancel an IOC limit that does not reach the price) and record the order."""
        self._futures_allowed()
        leverage = self._check_future(request, body, product)
        now = self.now()
        order = self._exchange.new_order(
            request,
            now,
            product_type="FUTURE",
            leverage=leverage,
            margin_type=str(body.get("margin_type") or "CROSS"),
        )
        fills = []
        if self._reaches(request, product):
            fills.append(self._fill_future(order, product, now))
        else:
            order.status, order.cancel_message = "CANCELLED", NOT_FILLED
        self._exchange.record(order, fills)
        return order

    def _preview_future(self, body: JsonObject, product: FuturesProduct) -> JsonObject:
        """POST /orders/preview for a future: what it would cost now, and why it would be refused (errs)."""
        self._futures_allowed()
        errors: list[str] = []
        base = value = commission = margin = ZERO
        leverage: Decimal | None = None
        try:
            request = _parse_order_request(body)
            leverage = self._check_future(request, body, product)
        except _Rejected as rejection:
            errors.append(rejection.preview)
        else:
            base = request.base_size or ZERO
            value = base * product.price
            commission = self._fee(base, product)
            margin = fx.initial_margin(self._opening(request, product), futures_terms(product), product.price, leverage)
        return preview_json(
            body.get("side"),
            base,
            value,
            commission,
            errors,
            (product.price, product.price),
            order_margin_total=_fmt(margin),
            leverage=_fmt(leverage) if leverage is not None else "",
            max_leverage=_fmt(product.max_leverage),
        )

    def _check_future(self, request: _OrderRequest, body: JsonObject, product: FuturesProduct) -> Decimal | None:
        """The leverage the order carries, or _Rejected with Coinbase's failure reasons."""
        if request.side not in ("BUY", "SELL"):
            raise _Rejected("INVALID_SIDE", "PREVIEW_INVALID_SIDE", "Invalid side")
        if request.kind not in IMMEDIATE_KINDS:
            raise _Rejected(
                "UNSUPPORTED_ORDER_CONFIGURATION",
                "PREVIEW_INVALID_ORDER_CONFIG",
                f"the test server fills futures orders at once only: market_market_ioc or sor_limit_ioc, not "
                f"{request.kind}",
            )
        size = request.base_size
        if size is None:
            raise _Rejected(
                "UNSUPPORTED_ORDER_CONFIGURATION", "PREVIEW_INVALID_ORDER_CONFIG", "Futures orders need base_size"
            )
        if not _on_increment(size, ONE):
            raise _Rejected("INVALID_SIZE_PRECISION", "PREVIEW_INVALID_SIZE_PRECISION", "Whole contracts only")
        if size < FUTURES_MIN_CONTRACTS:
            raise _Rejected("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_BASE_SIZE_TOO_SMALL", "Size too small")
        if size > FUTURES_MAX_CONTRACTS:
            raise _Rejected("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_BASE_SIZE_TOO_LARGE", "Size too large")
        limit = request.limit_price
        if limit is not None and (limit <= 0 or not _on_increment(limit, FUTURES_PRICE_INCREMENT)):
            raise _Rejected("INVALID_PRICE_PRECISION", "PREVIEW_INVALID_PRICE_PRECISION", "Price is not on the tick")
        leverage = _leverage(body.get("leverage"), product)
        margin_type = body.get("margin_type")
        if margin_type not in (None, "", *MARGIN_TYPES):
            raise _Rejected("INVALID_MARGIN_TYPE", "PREVIEW_INVALID_MARGIN_TYPE", f"Invalid margin_type {margin_type}")
        if self._reaches(request, product):
            self._check_margin(request, product, leverage)
        return leverage

    def _check_margin(self, request: _OrderRequest, product: FuturesProduct, leverage: Decimal | None) -> None:
        """The contracts the order opens need their initial margin plus the fee within the buying power."""
        needed = fx.initial_margin(self._opening(request, product), futures_terms(product), product.price, leverage)
        needed += self._fee(request.base_size or ZERO, product)
        positions = self._open_futures_positions()
        equity = self._futures_cash + sum((p.unrealized_pnl for p in positions), ZERO)
        in_use = sum((p.notional * FUTURES_INITIAL_MARGIN_RATE for p in positions), ZERO)
        if needed > equity - in_use:
            raise _Rejected(
                "INSUFFICIENT_FUNDS",
                "PREVIEW_INSUFFICIENT_FUNDS_FOR_FUTURES",
                f"Insufficient funds for futures: {_fmt(needed)} USD of margin and fee needed, "
                f"{_fmt(max(equity - in_use, ZERO))} USD of buying power",
            )

    def _opening(self, request: _OrderRequest, product: FuturesProduct) -> Decimal:
        """How many of the order's contracts open (the rest close the opposite position)."""
        size = request.base_size or ZERO
        held = signed(self._futures_positions.get(product.product_id))
        closing = min(abs(held), size) if held and (held > 0) != (request.side == "BUY") else ZERO
        return size - closing

    @staticmethod
    def _reaches(request: _OrderRequest, product: FuturesProduct) -> bool:
        """A market order always fills; a limit IOC when its price reaches the product's."""
        limit = request.limit_price
        if limit is None:
            return True
        return limit >= product.price if request.side == "BUY" else limit <= product.price

    def _fee(self, contracts: Decimal, product: FuturesProduct) -> Decimal:
        notional = contracts * product.contract_size * product.price
        return (notional * self._exchange.taker_fee_rate).quantize(CENT, rounding=ROUND_HALF_UP)

    # ---------------------------------------------------------------- execution

    def _fill_future(self, order: Order, product: FuturesProduct, now: datetime) -> Fill:
        """Fill the whole order at the product's price: move the position, realize PnL, charge the fee."""
        size, price = order.base_size or ZERO, product.price
        fee = self._fee(size, product)
        position = self._futures_positions.get(product.product_id)
        held = signed(position)
        entry = position.avg_entry_price if position is not None else ZERO
        quantity = size if order.side == "BUY" else -size
        realized = fx.realized_pnl(held, entry, quantity, price, futures_terms(product))
        now_held = held + quantity
        if held == 0 or (now_held != 0 and (held > 0) != (now_held > 0)):
            entry = price  # opened, or flipped to the other side
        elif (held > 0) == (quantity > 0):
            entry = ((abs(held) * entry + size * price) / abs(now_held)).quantize(AVERAGE_STEP, ROUND_HALF_UP)
        if position is None:
            position = FuturesPosition(product.product_id, "LONG", ZERO, entry, price, product.contract_size)
            self._futures_positions[product.product_id] = position
        position.side = "SHORT" if now_held < 0 else "LONG"
        position.contracts = abs(now_held)
        position.avg_entry_price = entry if now_held else ZERO
        position.current_price = price
        position.daily_realized_pnl += realized
        self._futures_cash += realized - fee
        order.filled_size, order.filled_value = size, size * price
        order.total_fees, order.number_of_fills = fee, 1
        order.last_fill_time, order.status = now, "FILLED"
        return self._exchange.new_fill(order, size, price, fee, "TAKER", now)


def _leverage(value: object, product: FuturesProduct) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        leverage = Decimal(str(value))
    except InvalidOperation:
        leverage = Decimal("NaN")
    if not leverage.is_finite() or leverage < ONE:
        raise _Rejected("INVALID_LEVERAGE", "PREVIEW_INVALID_LEVERAGE", f"Invalid leverage {value}")
    if leverage > product.max_leverage:
        raise _Rejected(
            "INVALID_LEVERAGE",
            "PREVIEW_INVALID_LEVERAGE",
            f"Leverage {value} is above the max leverage {_fmt(product.max_leverage)} of {product.product_id}",
        )
    return leverage
