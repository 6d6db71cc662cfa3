"""The in-memory spot exchange behind the Advanced Trade test server: quotes, balances, holds, matching, fills.

Invariant: available + held of a currency is what the account owns; every resting order's hold is counted in
`held` exactly once and released when the order fills, is cancelled, expires or is edited. Prices come from the
bundled replay candles. Every `_Exchange` method expects the server's lock to be held.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from trader.domain import Candle, quantize_down
from trader.market import ReplayMarketData
from trader.testing.advanced_trade.wire import (
    ONE,
    STOP_DOWN,
    STOP_UP,
    ZERO,
    Fill,
    JsonObject,
    Order,
    ProductSpec,
    _default_products,
    _fmt,
    _on_increment,
    _OrderRequest,
    _quantize_up,
    _Rejected,
    _rfc3339,
)

HISTORY_BARS = 1000  # one-minute replay bars the server serves as history
HALF_SPREAD = Decimal("0.00005")  # half of a 1 bps spread around the last close
USD_PEGGED = frozenset({"USD", "USDC", "USDT", "DAI"})
INSUFFICIENT_FUND_MESSAGE = "Insufficient balance in source account"
IMMEDIATE = frozenset({"IMMEDIATE_OR_CANCEL", "FILL_OR_KILL"})


class _Exchange:
    """Products, quotes, balances, orders and fills; every method expects the server's lock to be held."""

    def __init__(
        self,
        balances: Mapping[str, Decimal],
        bars: Mapping[str, list[Candle]],
        maker_fee_rate: Decimal,
        taker_fee_rate: Decimal,
    ) -> None:
        self.products = _default_products()
        self.bars = {product_id: bars[product_id] for product_id in self.products}
        self.maker_fee_rate = maker_fee_rate
        self.taker_fee_rate = taker_fee_rate
        self.hold_fee_rate = max(maker_fee_rate, taker_fee_rate)
        self.quotes: dict[str, tuple[Decimal, Decimal]] = {}
        for product_id, spec in self.products.items():
            close = self.bars[product_id][-1].close
            bid = quantize_down(close * (ONE - HALF_SPREAD), spec.quote_increment)
            ask = max(_quantize_up(close * (ONE + HALF_SPREAD), spec.quote_increment), bid + spec.quote_increment)
            self.quotes[product_id] = (bid, ask)
        currencies = [*balances, *(c for p in self.products.values() for c in (p.base_currency, p.quote_currency))]
        self.available: dict[str, Decimal] = {c: Decimal(balances.get(c, ZERO)) for c in dict.fromkeys(currencies)}
        self.held: dict[str, Decimal] = dict.fromkeys(self.available, ZERO)
        self.account_ids = {currency: str(uuid.uuid4()) for currency in self.available}
        self.cost_basis = {c: amount * self.usd_price(c) for c, amount in self.available.items()}
        self.orders: dict[str, Order] = {}
        self.client_ids: dict[str, str] = {}
        self.fills: list[Fill] = []
        self.volume = ZERO
        self.fees_paid = ZERO
        self._sequence = itertools.count(1)
        self.changed: dict[str, None] = {}  # ids of orders changed since the server last drained it (user channel)

    # ---------------------------------------------------------------- market data

    def mid(self, product_id: str) -> Decimal:
        bid, ask = self.quotes[product_id]
        return (bid + ask) / 2

    def price(self, product_id: str) -> Decimal:
        """The product's "last price": the mid, on the quote increment."""
        return quantize_down(self.mid(product_id), self.products[product_id].quote_increment)

    def usd_price(self, currency: str) -> Decimal:
        if currency in USD_PEGGED:
            return ONE
        product_id = f"{currency}-USD"
        return self.mid(product_id) if product_id in self.quotes else ZERO

    def minute_bars(self, product_id: str, now: datetime) -> list[Candle]:
        """The recorded bars re-timed to end at the current minute, plus the still-open bar at the current mid."""
        bars = self.bars[product_id]
        minute = int(now.timestamp()) // 60 * 60
        shift = timedelta(seconds=minute - 60 - int(bars[-1].start.timestamp()))
        closed = [replace(bar, start=bar.start + shift) for bar in bars]
        last, mid = bars[-1].close, self.price(product_id)
        current = Candle(datetime.fromtimestamp(minute, tz=UTC), last, max(last, mid), min(last, mid), mid, ZERO)
        return [*closed, current]

    def set_price(self, product_id: str, bid: Decimal, ask: Decimal, now: datetime) -> None:
        self.quotes[product_id] = (bid, ask)
        self.expire(now)
        mid = self.mid(product_id)
        for order in self._open_orders(product_id):
            if order.stop_pending and self._stop_hit(order, mid):
                order.trigger_status = "STOP_TRIGGERED"
                self.changed[order.order_id] = None
                self._match(order, now)
        for order in self._open_orders(product_id):
            if not order.stop_pending and order.limit_price is not None and self._crosses(order):
                self.execute(order, order.remaining, order.limit_price, "MAKER", now)

    # ---------------------------------------------------------------- balances

    def total(self, currency: str) -> Decimal:
        return self.available.get(currency, ZERO) + self.held.get(currency, ZERO)

    def credit(self, currency: str, amount: Decimal) -> None:
        if currency not in self.available:
            self.available[currency] = ZERO
            self.held[currency] = ZERO
            self.account_ids[currency] = str(uuid.uuid4())
            self.cost_basis[currency] = ZERO
        self.available[currency] += amount

    def _reserve(self, order: Order, currency: str, amount: Decimal) -> None:
        self.available[currency] -= amount
        self.held[currency] += amount
        order.hold, order.hold_currency = amount, currency

    def _release(self, order: Order, amount: Decimal) -> None:
        if amount <= 0 or not order.hold_currency:
            return
        self.held[order.hold_currency] -= amount
        self.available[order.hold_currency] += amount
        order.hold -= amount

    # ---------------------------------------------------------------- order entry

    def check(self, request: _OrderRequest, now: datetime) -> ProductSpec:
        """The product, or _Rejected with Coinbase's failure reasons when the order breaks a rule."""
        spec = self.products.get(request.product_id)
        if spec is None:
            raise _Rejected("INVALID_PRODUCT_ID", "PREVIEW_INVALID_PRODUCT_ID", "Invalid product_id")
        if request.side not in ("BUY", "SELL"):
            raise _Rejected("INVALID_SIDE", "PREVIEW_INVALID_SIDE", "Invalid side")
        if spec.trading_disabled or spec.cancel_only:
            raise _Rejected("ORDER_ENTRY_DISABLED", "PREVIEW_TRADING_DISABLED", "Order entry is disabled")
        market = request.spec.order_type == "MARKET"
        if market and spec.limit_only:
            raise _Rejected("UNSUPPORTED_ORDER_CONFIGURATION", "PREVIEW_INVALID_ORDER_CONFIG", "Limit only mode")
        self._check_precision(request, spec)
        self._check_sizes(request, spec)
        self._check_prices(request, spec, now)
        currency, needed = self.funds_needed(request, spec)
        if needed > self.available.get(currency, ZERO):
            raise _Rejected("INSUFFICIENT_FUND", "PREVIEW_INSUFFICIENT_FUND", INSUFFICIENT_FUND_MESSAGE)
        return spec

    @staticmethod
    def _check_precision(request: _OrderRequest, spec: ProductSpec) -> None:
        if request.base_size is not None and not _on_increment(request.base_size, spec.base_increment):
            raise _Rejected("INVALID_SIZE_PRECISION", "PREVIEW_INVALID_SIZE_PRECISION", "Too many decimals in size")
        if request.quote_size is not None and not _on_increment(request.quote_size, spec.quote_increment):
            raise _Rejected(
                "INVALID_SIZE_PRECISION", "PREVIEW_INVALID_QUOTE_SIZE_PRECISION", "Too many decimals in quote size"
            )
        for price in (request.limit_price, request.stop_price):
            if price is not None and not _on_increment(price, spec.quote_increment):
                raise _Rejected(
                    "INVALID_PRICE_PRECISION", "PREVIEW_INVALID_PRICE_PRECISION", "Too many decimals in price"
                )

    def _check_sizes(self, request: _OrderRequest, spec: ProductSpec) -> None:
        bid, ask = self.quotes[spec.product_id]
        base, notional = request.base_size, request.quote_size
        if base is None and notional is not None and request.side == "SELL":
            base = quantize_down(notional / bid, spec.base_increment)
        if base is not None:
            if base < spec.base_min_size or base <= 0:
                raise _Rejected("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_BASE_SIZE_TOO_SMALL", "Size too small")
            if base > spec.base_max_size:
                raise _Rejected("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_BASE_SIZE_TOO_LARGE", "Size too large")
        if notional is None and base is not None:
            notional = base * (request.limit_price or (ask if request.side == "BUY" else bid))
        if notional is not None:
            if notional < spec.quote_min_size:
                raise _Rejected("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_QUOTE_SIZE_TOO_SMALL", "Amount too small")
            if notional > spec.quote_max_size:
                raise _Rejected("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_QUOTE_SIZE_TOO_LARGE", "Amount too large")

    def _check_prices(self, request: _OrderRequest, spec: ProductSpec, now: datetime) -> None:
        for price in (request.limit_price, request.stop_price):
            if price is not None and price <= 0:
                raise _Rejected("INVALID_LIMIT_PRICE", "PREVIEW_INVALID_LIMIT_PRICE", "Price must be positive")
        if request.end_time is not None and request.end_time <= now:
            raise _Rejected("INVALID_REQUEST", "PREVIEW_END_TIME_IS_IN_THE_PAST", "end_time is in the past")
        if request.stop_price is not None:
            mid = self.mid(spec.product_id)
            if request.stop_direction == STOP_UP and request.stop_price <= mid:
                raise _Rejected(
                    "INVALID_REQUEST", "PREVIEW_STOP_PRICE_BELOW_LAST_TRADE_PRICE", "Stop price below last price"
                )
            if request.stop_direction == STOP_DOWN and request.stop_price >= mid:
                raise _Rejected(
                    "INVALID_REQUEST", "PREVIEW_STOP_PRICE_ABOVE_LAST_TRADE_PRICE", "Stop price above last price"
                )
        bid, ask = self.quotes[spec.product_id]
        if request.post_only and request.limit_price is not None:
            crosses = request.limit_price >= ask if request.side == "BUY" else request.limit_price <= bid
            if crosses:
                raise _Rejected(
                    "INVALID_LIMIT_PRICE_POST_ONLY",
                    "PREVIEW_INVALID_LIMIT_PRICE_POST_ONLY",
                    "Post-only limit price would take liquidity",
                )

    def funds_needed(self, request: _OrderRequest, spec: ProductSpec) -> tuple[str, Decimal]:
        """The currency and amount the order needs: spent at once (market) or held while it rests."""
        bid, ask = self.quotes[spec.product_id]
        if request.spec.order_type == "MARKET":
            if request.side == "BUY":
                if request.quote_size is not None:
                    return spec.quote_currency, request.quote_size
                return spec.quote_currency, (request.base_size or ZERO) * ask * (ONE + self.taker_fee_rate)
            if request.base_size is not None:
                return spec.base_currency, request.base_size
            return spec.base_currency, quantize_down((request.quote_size or ZERO) / bid, spec.base_increment)
        base, price = request.base_size or ZERO, request.limit_price or ZERO
        if request.side == "BUY":
            return spec.quote_currency, base * price * (ONE + self.hold_fee_rate)
        return spec.base_currency, base

    def new_order(self, request: _OrderRequest, now: datetime, **more: Any) -> Order:
        """An order for a request, next in the sequence; `more`: the fields of its kind (spot's stop and post-only,
        a future's product type, leverage and margin type)."""
        return Order(
            order_id=str(uuid.uuid4()),
            client_order_id=request.client_order_id,
            product_id=request.product_id,
            side=request.side,
            kind=request.kind,
            configuration=dict(request.configuration),
            created_time=now,
            sequence=next(self._sequence),
            base_size=request.base_size,
            limit_price=request.limit_price,
            **more,
        )

    def new_fill(
        self, order: Order, size: Decimal, price: Decimal, fee: Decimal, liquidity: str, now: datetime
    ) -> Fill:
        """A fill of `order`, next in the sequence."""
        return Fill(
            entry_id=str(uuid.uuid4()),
            trade_id=str(uuid.uuid4()),
            order_id=order.order_id,
            product_id=order.product_id,
            side=order.side,
            price=price,
            size=size,
            commission=fee,
            liquidity_indicator=liquidity,
            trade_time=now,
            size_in_quote=order.quote_size is not None,
            sequence=next(self._sequence),
        )

    def place(self, request: _OrderRequest, now: datetime) -> Order:
        spec = self.check(request, now)
        order = self.new_order(
            request,
            now,
            quote_size=request.quote_size,
            stop_price=request.stop_price,
            stop_direction=request.stop_direction,
            end_time=request.end_time,
            post_only=request.post_only,
            trigger_status="STOP_PENDING" if request.stop_price is not None else "INVALID_ORDER_TYPE",
        )
        self.orders[order.order_id] = order
        self.client_ids[order.client_order_id] = order.order_id
        self.changed[order.order_id] = None
        if order.order_type == "MARKET":
            self._fill_market(order, spec, now)
            return order
        currency, amount = self.funds_needed(request, spec)
        self._reserve(order, currency, amount)
        if not order.stop_pending:
            self._match(order, now)
        return order

    def record(self, order: Order, fills: Iterable[Fill]) -> None:
        """Keep an order traded outside the spot book (a US future: cfm.py) and its fills, so the order and fill
        endpoints and the user channel see it as they see spot orders; it holds nothing here."""
        self.orders[order.order_id] = order
        self.client_ids[order.client_order_id] = order.order_id
        self.changed[order.order_id] = None
        self.fills.extend(fills)

    def _fill_market(self, order: Order, spec: ProductSpec, now: datetime) -> None:
        bid, ask = self.quotes[order.product_id]
        if order.side == "BUY":
            price = ask
            size = order.base_size
            if size is None:  # spend quote_size in total, fee included, as Coinbase does for quote-sized buys
                budget = order.quote_size or ZERO
                size = quantize_down(budget / (ask * (ONE + self.taker_fee_rate)), spec.base_increment)
        else:
            price = bid
            size = order.base_size
            if size is None:
                size = quantize_down((order.quote_size or ZERO) / bid, spec.base_increment)
        self.execute(order, size, price, "TAKER", now)
        order.status = "FILLED"

    def _match(self, order: Order, now: datetime) -> None:
        """A limit order (or a triggered stop) meeting the book: take at the touch, cancel (IOC/FOK) or rest."""
        bid, ask = self.quotes[order.product_id]
        if self._crosses(order):
            self.execute(order, order.remaining, ask if order.side == "BUY" else bid, "TAKER", now)
        elif order.time_in_force in IMMEDIATE:
            self.close(order, "CANCELLED", "Immediate order could not be filled")

    def _crosses(self, order: Order) -> bool:
        bid, ask = self.quotes[order.product_id]
        if order.limit_price is None:
            return False
        return order.limit_price >= ask if order.side == "BUY" else order.limit_price <= bid

    @staticmethod
    def _stop_hit(order: Order, mid: Decimal) -> bool:
        if order.stop_price is None:
            return False
        return mid >= order.stop_price if order.stop_direction == STOP_UP else mid <= order.stop_price

    def _open_orders(self, product_id: str) -> list[Order]:
        return [o for o in self.orders.values() if o.is_open and o.product_id == product_id]

    # ---------------------------------------------------------------- executions

    def execute(self, order: Order, size: Decimal, price: Decimal, liquidity: str, now: datetime) -> Fill:
        """Fill `size` of `order` at `price`, settling balances, the order's hold and the fee."""
        spec = self.products[order.product_id]
        value = size * price
        fee = value * (self.maker_fee_rate if liquidity == "MAKER" else self.taker_fee_rate)
        completes = order.base_size is None or order.filled_size + size >= order.base_size
        if order.hold:
            share = size * (order.limit_price or ZERO) * (ONE + self.hold_fee_rate) if order.side == "BUY" else size
            self._release(order, order.hold if completes else min(order.hold, share))
        base, quote = spec.base_currency, spec.quote_currency
        if order.side == "BUY":
            self.credit(quote, -(value + fee))
            self.credit(base, size)
            self.cost_basis[base] = self.cost_basis.get(base, ZERO) + value + fee
        else:
            holding = self.total(base)
            if holding > 0:
                self.cost_basis[base] -= self.cost_basis.get(base, ZERO) * min(size / holding, ONE)
            self.credit(base, -size)
            self.credit(quote, value - fee)
        order.filled_size += size
        order.filled_value += value
        order.total_fees += fee
        order.number_of_fills += 1
        order.last_fill_time = now
        self.changed[order.order_id] = None
        if completes:
            order.status = "FILLED"
        fill = self.new_fill(order, size, price, fee, liquidity, now)
        self.fills.append(fill)
        self.volume += value
        self.fees_paid += fee
        return fill

    def close(self, order: Order, status: str, message: str = "") -> None:
        order.status = status
        order.cancel_message = message
        self.changed[order.order_id] = None
        self._release(order, order.hold)

    def expire(self, now: datetime) -> None:
        for order in self.orders.values():
            if order.is_open and order.end_time is not None and order.end_time <= now:
                self.close(order, "EXPIRED", "Order expired")

    # ---------------------------------------------------------------- cancels and edits

    def cancel(self, order_ids: list[str]) -> list[JsonObject]:
        results: list[JsonObject] = []
        seen: set[str] = set()
        for order_id in order_ids:
            order = self.orders.get(order_id)
            reason = ""
            if order is None:
                reason = "UNKNOWN_CANCEL_ORDER"
            elif order_id in seen:
                reason = "DUPLICATE_CANCEL_REQUEST"
            elif order.status == "FILLED":
                reason = "ORDER_IS_FULLY_FILLED"
            elif not order.is_open:
                reason = "COMMANDER_REJECTED_CANCEL_ORDER"
            else:
                self.close(order, "CANCELLED", "User requested cancel")
            seen.add(order_id)
            failure = reason or "UNKNOWN_CANCEL_FAILURE_REASON"
            results.append({"success": not reason, "failure_reason": failure, "order_id": order_id})
        return results

    def edit_errors(self, order: Order | None, size: Decimal, price: Decimal) -> list[JsonObject]:
        """Why an edit to (size, price) is refused, in Coinbase's {edit_failure_reason, preview_failure_reason}."""

        def error(edit: str, preview: str = "UNKNOWN_PREVIEW_FAILURE_REASON") -> list[JsonObject]:
            return [{"edit_failure_reason": edit, "preview_failure_reason": preview}]

        if order is None:
            return error("ORDER_NOT_FOUND")
        if order.kind != "limit_limit_gtc":
            return error("ONLY_LIMIT_ORDER_EDITS_SUPPORTED")
        if not order.is_open:
            return error("ONLY_OPEN_ORDERS_CAN_BE_EDITED")
        spec = self.products[order.product_id]
        if size <= 0 or not _on_increment(size, spec.base_increment):
            return error("INVALID_EDITED_SIZE", "PREVIEW_INVALID_SIZE_PRECISION")
        if price <= 0 or not _on_increment(price, spec.quote_increment):
            return error("INVALID_EDITED_PRICE", "PREVIEW_INVALID_PRICE_PRECISION")
        if size < order.filled_size:
            return error("CANNOT_EDIT_TO_BELOW_FILLED_SIZE")
        if size == order.base_size and price == order.limit_price:
            return error("EDIT_REQUEST_EQUAL_TO_ORIGINAL_REQUEST")
        bid, ask = self.quotes[order.product_id]
        if order.post_only and (price >= ask if order.side == "BUY" else price <= bid):
            return error("UNKNOWN_EDIT_ORDER_FAILURE_REASON", "PREVIEW_INVALID_LIMIT_PRICE_POST_ONLY")
        if self._edit_hold(order, size, price) > self.available[order.hold_currency] + order.hold:
            return error("UNKNOWN_EDIT_ORDER_FAILURE_REASON", "PREVIEW_INSUFFICIENT_FUND")
        return []

    def _edit_hold(self, order: Order, size: Decimal, price: Decimal) -> Decimal:
        rest = size - order.filled_size
        return rest * price * (ONE + self.hold_fee_rate) if order.side == "BUY" else rest

    def edit(self, order: Order, size: Decimal, price: Decimal, now: datetime) -> None:
        """Apply an edit that `edit_errors` accepted: new size and price, new hold, and a match if it now crosses."""
        self._release(order, order.hold)
        order.base_size, order.limit_price = size, price
        order.configuration.update(base_size=_fmt(size), limit_price=_fmt(price))
        order.edit_history.append({"price": _fmt(price), "size": _fmt(size), "replace_accept_timestamp": _rfc3339(now)})
        self.changed[order.order_id] = None
        if order.remaining <= 0:
            order.status = "FILLED"
            return
        self._reserve(order, order.hold_currency, self._edit_hold(order, size, price))
        self._match(order, now)


def _replay_bars(product_ids: Iterable[str]) -> dict[str, list[Candle]]:
    """The last HISTORY_BARS one-minute bars of the bundled replay per product."""
    replay = ReplayMarketData()
    replay.seek(replay.bars - 1)
    return {product_id: replay.history(product_id, HISTORY_BARS) for product_id in product_ids}
