"""The REST endpoints of the Advanced Trade test server and the route table that maps requests to them.

Each endpoint is a method of `_Endpoints` (mixed into `AdvancedTradeServer`) that takes a parsed `_Call` and
returns the JSON body of a 200 answer, or raises `_ApiError`; the server calls it with its lock held, after
authentication, so an endpoint reads and changes the exchange freely.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from trader.domain import quantize_down
from trader.testing.advanced_trade.cfm import _FuturesOrders
from trader.testing.advanced_trade.exchange import USD_PEGGED, _Exchange
from trader.testing.advanced_trade.wire import (
    ONE,
    ZERO,
    FuturesPosition,
    FuturesProduct,
    JsonObject,
    Order,
    PerpPosition,
    ProductSpec,
    _aggregate,
    _candle_json,
    _collateral_json,
    _decimal,
    _fill_json,
    _fmt,
    _futures_balance_json,
    _futures_position_json,
    _futures_product_json,
    _invalid,
    _money,
    _not_found,
    _order_created,
    _order_failed,
    _order_json,
    _OrderRequest,
    _page_by_sequence,
    _parse_order_request,
    _parse_time,
    _permission_denied,
    _perp_position_json,
    _product_json,
    _Rejected,
    _rfc3339,
    preview_json,
)

API = "/api/v3/brokerage"
MAX_CANDLES = 350  # Coinbase's cap on candles per request
GRANULARITIES = {
    "ONE_MINUTE": 60,
    "FIVE_MINUTE": 300,
    "FIFTEEN_MINUTE": 900,
    "THIRTY_MINUTE": 1800,
    "ONE_HOUR": 3600,
    "TWO_HOUR": 7200,
    "SIX_HOUR": 21600,
    "ONE_DAY": 86400,
}
MAX_CANCEL_IDS = 100  # batch_cancel refuses more ids than this, cancelling nothing
ACCOUNTS_DEFAULT_LIMIT, ACCOUNTS_MAX_LIMIT = 49, 250
ORDERS_DEFAULT_LIMIT, ORDERS_MAX_LIMIT = 100, 1000
FILLS_DEFAULT_LIMIT, FILLS_MAX_LIMIT = 100, 1000
FIAT = frozenset({"USD", "EUR", "GBP"})

Scope = Literal["public", "auth", "view", "trade"]


@dataclass(frozen=True)
class _Call:
    """One parsed request as an endpoint handler sees it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: JsonObject
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> str | None:
        values = [value for value in self.query.get(name, []) if value != ""]
        return values[0] if values else None

    def args(self, name: str) -> list[str]:
        """A repeated query parameter (product_ids=A&product_ids=B); comma-separated values are split too."""
        return [part for value in self.query.get(name, []) for part in value.split(",") if part]

    def int_arg(self, name: str, default: int, maximum: int) -> int:
        text = self.arg(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise _invalid(f"{name} must be an integer, not {text!r}") from None
        return default if value <= 0 else min(value, maximum)

    def time_arg(self, name: str) -> datetime | None:
        text = self.arg(name)
        return _parse_time(text, name) if text is not None else None


Handler = Callable[["_Endpoints", _Call], JsonObject]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    scope: Scope


def _route(method: str, path: str, handler: Handler, scope: Scope = "view") -> _Route:
    """A route for API + `path`, where "{name}" matches one path segment passed to the handler as params[name]."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", API + path)
    return _Route(method, re.compile(regex), handler, scope)


class _Endpoints(_FuturesOrders):
    """The endpoint methods; `AdvancedTradeServer` supplies the state they read and its clock (futures order entry
    is cfm.py's)."""

    permissions: dict[str, Any]
    derivatives: bool
    user_id: str
    portfolio_uuid: str
    intx_portfolio_uuid: str
    _exchange: _Exchange
    _perp_positions: dict[str, PerpPosition]
    _perp_collateral: dict[str, Decimal]
    _futures_positions: dict[str, FuturesPosition]
    _futures_products: dict[str, FuturesProduct]
    _futures_cash: Decimal

    def now(self) -> datetime:
        """The server clock (`AdvancedTradeServer.now`)."""
        raise NotImplementedError

    def _spec(self, product_id: str) -> ProductSpec:
        spec = self._exchange.products.get(product_id)
        if spec is None:
            raise _not_found(f"product {product_id} not found")
        return spec

    # ---------------------------------------------------------------- endpoints: market data

    def _get_time(self, call: _Call) -> JsonObject:
        now = self.now()
        millis = int(now.timestamp() * 1000)
        return {"iso": _rfc3339(now), "epochSeconds": str(millis // 1000), "epochMillis": str(millis)}

    def _product(self, spec: ProductSpec) -> JsonObject:
        exchange = self._exchange
        return _product_json(spec, exchange.price(spec.product_id), exchange.bars[spec.product_id])

    def _get_products(self, call: _Call) -> JsonObject:
        wanted = call.args("product_ids")
        specs = [s for s in self._exchange.products.values() if not wanted or s.product_id in wanted]
        if call.arg("product_type") not in (None, "SPOT"):
            specs = []
        offset = call.int_arg("offset", 0, len(specs))
        limit = call.int_arg("limit", len(specs) or 1, 10_000)
        page = specs[offset : offset + limit]
        return {"products": [self._product(spec) for spec in page], "num_products": len(specs)}

    def _get_product(self, call: _Call) -> JsonObject:
        future = self._futures_products.get(call.params["product_id"])
        if future is not None:
            return _futures_product_json(future)
        return self._product(self._spec(call.params["product_id"]))

    def _get_candles(self, call: _Call) -> JsonObject:
        spec = self._spec(call.params["product_id"])
        granularity = call.arg("granularity") or ""
        seconds = GRANULARITIES.get(granularity)
        if seconds is None:
            raise _invalid(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")
        start, end = call.arg("start"), call.arg("end")
        if start is None or end is None or not start.isdigit() or not end.isdigit():
            raise _invalid("start and end are required, as UNIX seconds")
        first, last = int(start), int(end)
        if first > last:
            raise _invalid("start must not be after end")
        if (last - first) // seconds > MAX_CANDLES:
            raise _invalid(
                f"start and end argument is invalid - number of candles requested should be less than {MAX_CANDLES}"
            )
        limit = call.int_arg("limit", MAX_CANDLES, MAX_CANDLES)
        candles = _aggregate(self._exchange.minute_bars(spec.product_id, self.now()), seconds)
        chosen = [c for c in candles if first <= int(c.start.timestamp()) <= last]
        return {"candles": [_candle_json(c) for c in reversed(chosen)][:limit]}

    def _book_json(self, spec: ProductSpec, levels: int) -> JsonObject:
        bid, ask = self._exchange.quotes[spec.product_id]
        step = max(spec.quote_increment, quantize_down(bid * Decimal("0.00002"), spec.quote_increment))
        sizes = [Decimal("0.25") * (level + 1) for level in range(levels)]
        return {
            "product_id": spec.product_id,
            "bids": [{"price": _fmt(bid - step * i), "size": _fmt(size)} for i, size in enumerate(sizes)],
            "asks": [{"price": _fmt(ask + step * i), "size": _fmt(size)} for i, size in enumerate(sizes)],
            "time": _rfc3339(self.now()),
        }

    def _get_product_book(self, call: _Call) -> JsonObject:
        spec = self._spec(call.arg("product_id") or "")
        bid, ask = self._exchange.quotes[spec.product_id]
        mid = (bid + ask) / 2
        return {
            "pricebook": self._book_json(spec, call.int_arg("limit", 10, 500)),
            "last": _fmt(self._exchange.price(spec.product_id)),
            "mid_market": _fmt(mid),
            "spread_bps": _fmt(((ask - bid) / mid * Decimal(10000)).quantize(Decimal("0.0001"))),
            "spread_absolute": _fmt(ask - bid),
        }

    def _get_best_bid_ask(self, call: _Call) -> JsonObject:
        wanted = call.args("product_ids") or list(self._exchange.products)
        specs = [self._exchange.products[p] for p in wanted if p in self._exchange.products]
        books = [self._book_json(spec, 1) for spec in specs]
        for product_id in wanted:  # a listed future's touch is its price on both sides (its orders fill there)
            future = self._futures_products.get(product_id)
            if future is not None:
                level = [{"price": _fmt(future.price), "size": "100"}]
                books.append({"product_id": product_id, "bids": level, "asks": level, "time": _rfc3339(self.now())})
        return {"pricebooks": books}

    # ---------------------------------------------------------------- endpoints: accounts and portfolios

    def _account_json(self, currency: str) -> JsonObject:
        exchange = self._exchange
        created = _rfc3339(datetime(2024, 1, 1, tzinfo=UTC))
        return {
            "uuid": exchange.account_ids[currency],
            "name": f"{currency} Wallet",
            "currency": currency,
            "available_balance": _money(exchange.available[currency], currency),
            "default": True,
            "active": True,
            "created_at": created,
            "updated_at": _rfc3339(self.now()),
            "deleted_at": None,
            "type": "ACCOUNT_TYPE_FIAT" if currency in FIAT else "ACCOUNT_TYPE_CRYPTO",
            "ready": True,
            "hold": _money(exchange.held[currency], currency),
            "retail_portfolio_id": self.portfolio_uuid,
        }

    def _get_accounts(self, call: _Call) -> JsonObject:
        currencies = sorted(self._exchange.available)
        limit = call.int_arg("limit", ACCOUNTS_DEFAULT_LIMIT, ACCOUNTS_MAX_LIMIT)
        cursor = call.arg("cursor")
        if cursor is not None and not cursor.isdigit():
            raise _invalid(f"cursor {cursor!r} is not valid")
        offset = int(cursor or 0)
        page = currencies[offset : offset + limit]
        has_next = offset + limit < len(currencies)
        return {
            "accounts": [self._account_json(currency) for currency in page],
            "has_next": has_next,
            "cursor": str(offset + limit) if has_next else "",
            "size": len(page),
        }

    def _get_account(self, call: _Call) -> JsonObject:
        for currency, account_id in self._exchange.account_ids.items():
            if account_id == call.params["account_uuid"]:
                return {"account": self._account_json(currency)}
        raise _not_found(f"account {call.params['account_uuid']} not found")

    def _portfolios(self) -> list[JsonObject]:
        default_type = self.permissions["portfolio_type"]
        portfolios = [{"name": "Default", "uuid": self.portfolio_uuid, "type": default_type, "deleted": False}]
        if self.derivatives:
            intx = {"name": "Perpetuals", "uuid": self.intx_portfolio_uuid, "type": "INTX", "deleted": False}
            portfolios.append(intx)
        return portfolios

    def _get_portfolios(self, call: _Call) -> JsonObject:
        kind = call.arg("portfolio_type")
        return {"portfolios": [p for p in self._portfolios() if kind in (None, p["type"])]}

    def _get_portfolio_breakdown(self, call: _Call) -> JsonObject:
        portfolio = next((p for p in self._portfolios() if p["uuid"] == call.params["portfolio_uuid"]), None)
        if portfolio is None:
            raise _not_found(f"portfolio {call.params['portfolio_uuid']} not found")
        exchange = self._exchange
        spot = portfolio["uuid"] == self.portfolio_uuid
        currencies = [c for c in sorted(exchange.available) if spot and (exchange.total(c) > 0 or c == "USD")]
        worth = {c: exchange.total(c) * exchange.usd_price(c) for c in currencies}
        total = sum(worth.values(), ZERO)
        cash = sum((worth[c] for c in currencies if c in USD_PEGGED), ZERO)
        perp_pnl = sum((p.unrealized_pnl for p in self._perp_positions.values()), ZERO) if not spot else ZERO
        positions = []
        for currency in currencies:
            quantity, price = exchange.total(currency), exchange.usd_price(currency)
            basis = exchange.cost_basis.get(currency, ZERO)
            available = exchange.available[currency]
            positions.append(
                {
                    "asset": currency,
                    "account_uuid": exchange.account_ids[currency],
                    "total_balance_fiat": float(worth[currency]),
                    "total_balance_crypto": float(quantity),
                    "available_to_trade_fiat": float(available * price),
                    "allocation": float(worth[currency] / total) if total else 0.0,
                    "cost_basis": _money(basis.quantize(Decimal("0.01")), "USD"),
                    "is_cash": currency in USD_PEGGED,
                    "average_entry_price": _money(
                        (basis / quantity).quantize(Decimal("0.01")) if quantity else ZERO, "USD"
                    ),
                    "available_to_trade_crypto": float(available),
                    "unrealized_pnl": float(worth[currency] - basis),
                    "available_to_transfer_fiat": float(available * price),
                    "available_to_transfer_crypto": float(available),
                    "account_type": "ACCOUNT_TYPE_FIAT" if currency in FIAT else "ACCOUNT_TYPE_CRYPTO",
                }
            )
        balances = {
            "total_balance": _money(total, "USD"),
            "total_futures_balance": _money(ZERO, "USD"),
            "total_cash_equivalent_balance": _money(cash, "USD"),
            "total_crypto_balance": _money(total - cash, "USD"),
            "futures_unrealized_pnl": _money(ZERO, "USD"),
            "perp_unrealized_pnl": _money(perp_pnl, "USD"),
        }
        breakdown = {
            "portfolio": portfolio,
            "portfolio_balances": balances,
            "spot_positions": positions,
            "perp_positions": [],
            "futures_positions": [],
        }
        return {"breakdown": breakdown}

    def _get_transaction_summary(self, call: _Call) -> JsonObject:
        exchange = self._exchange
        return {
            "total_volume": float(exchange.volume),
            "total_fees": float(exchange.fees_paid),
            "fee_tier": {
                "pricing_tier": "Advanced 1",
                "usd_from": "0",
                "usd_to": "10000",
                "taker_fee_rate": _fmt(exchange.taker_fee_rate),
                "maker_fee_rate": _fmt(exchange.maker_fee_rate),
                "aop_from": "",
                "aop_to": "",
            },
            "margin_rate": None,
            "goods_and_services_tax": None,
            "advanced_trade_only_volume": float(exchange.volume),
            "advanced_trade_only_fees": float(exchange.fees_paid),
            "coinbase_pro_volume": 0,
            "coinbase_pro_fees": 0,
            "total_balance": "",
            "has_promo_fee": False,
        }

    def _get_key_permissions(self, call: _Call) -> JsonObject:
        return {
            "can_view": bool(self.permissions["can_view"]),
            "can_trade": bool(self.permissions["can_trade"]),
            "can_transfer": bool(self.permissions["can_transfer"]),
            "portfolio_uuid": self.portfolio_uuid,
            "portfolio_type": self.permissions["portfolio_type"],
        }

    # ---------------------------------------------------------------- endpoints: orders

    def _post_order(self, call: _Call) -> JsonObject:
        client_order_id = call.body.get("client_order_id")
        if not isinstance(client_order_id, str) or not client_order_id:
            raise _invalid("client_order_id is required")
        existing = self._exchange.client_ids.get(client_order_id)
        if existing is not None:  # Coinbase answers a repeated client_order_id with the original order
            return _order_created(self._exchange.orders[existing])
        try:
            request = _parse_order_request(call.body)
            future = self._futures_products.get(request.product_id)
            if future is not None:
                order = self._place_future(request, call.body, future)
            else:
                order = self._exchange.place(request, self.now())
        except _Rejected as rejection:
            return _order_failed(rejection, call.body.get("order_configuration"))
        return _order_created(order)

    def _post_preview(self, call: _Call) -> JsonObject:
        future = self._futures_products.get(str(call.body.get("product_id") or ""))
        if future is not None:
            return self._preview_future(call.body, future)
        exchange = self._exchange
        errors: list[str] = []
        base = value = commission = ZERO
        best_bid = best_ask = ZERO
        try:
            request = _parse_order_request(call.body)
        except _Rejected as rejection:
            errors.append(rejection.preview)
        else:
            try:
                exchange.check(request, self.now())
            except _Rejected as rejection:
                errors.append(rejection.preview)
            spec = exchange.products.get(request.product_id)
            if spec is not None:
                best_bid, best_ask = exchange.quotes[spec.product_id]
                base, value, commission = self._estimate(request, spec)
        return preview_json(call.body.get("side"), base, value, commission, errors, (best_bid, best_ask))

    def _estimate(self, request: _OrderRequest, spec: ProductSpec) -> tuple[Decimal, Decimal, Decimal]:
        """(base size, value, commission) the order would execute at now, or rest at, for previews."""
        exchange = self._exchange
        bid, ask = exchange.quotes[spec.product_id]
        touch = ask if request.side == "BUY" else bid
        if request.spec.order_type == "MARKET":
            rate = exchange.taker_fee_rate
            base = request.base_size
            if base is None:
                divisor = touch * (ONE + rate) if request.side == "BUY" else touch
                base = quantize_down((request.quote_size or ZERO) / divisor, spec.base_increment)
            return base, base * touch, base * touch * rate
        limit, base = request.limit_price or ZERO, request.base_size or ZERO
        crosses = limit >= ask if request.side == "BUY" else limit <= bid
        price = touch if crosses and request.stop_price is None else limit
        rate = exchange.taker_fee_rate if crosses else exchange.maker_fee_rate
        return base, base * price, base * price * rate

    def _edit_target(self, call: _Call) -> tuple[Order | None, Decimal, Decimal]:
        order_id = call.body.get("order_id")
        if not isinstance(order_id, str) or not order_id:
            raise _invalid("order_id is required")
        order = self._exchange.orders.get(order_id)
        size_text, price_text = call.body.get("size"), call.body.get("price")
        size = _decimal(size_text, "size") if size_text not in (None, "") else None
        price = _decimal(price_text, "price") if price_text not in (None, "") else None
        return (
            order,
            size if size is not None else (order.base_size if order and order.base_size else ZERO),
            price if price is not None else (order.limit_price if order and order.limit_price else ZERO),
        )

    def _post_edit(self, call: _Call) -> JsonObject:
        order, size, price = self._edit_target(call)
        errors = self._exchange.edit_errors(order, size, price)
        if order is not None and not errors:
            self._exchange.edit(order, size, price, self.now())
        return {"success": not errors, "errors": errors}

    def _post_edit_preview(self, call: _Call) -> JsonObject:
        order, size, price = self._edit_target(call)
        exchange = self._exchange
        errors = exchange.edit_errors(order, size, price)
        bid, ask = exchange.quotes[order.product_id] if order else (ZERO, ZERO)
        crosses = order is not None and (price >= ask if order.side == "BUY" else price <= bid)
        rate = exchange.taker_fee_rate if crosses else exchange.maker_fee_rate
        value = size * price
        commission = value * rate
        buy = order is not None and order.side == "BUY"
        return {
            "errors": errors,
            "slippage": "0",
            "order_total": _fmt(value + commission if buy else value - commission),
            "commission_total": _fmt(commission),
            "quote_size": _fmt(value),
            "base_size": _fmt(size),
            "best_bid": _fmt(bid),
            "best_ask": _fmt(ask),
            "average_filled_price": _fmt(order.average_filled_price if order else ZERO),
        }

    def _post_batch_cancel(self, call: _Call) -> JsonObject:
        order_ids = call.body.get("order_ids")
        if not isinstance(order_ids, list) or not order_ids or not all(isinstance(i, str) for i in order_ids):
            raise _invalid("order_ids must be a non-empty list of order ids")
        if len(order_ids) > MAX_CANCEL_IDS:
            raise _invalid(f"order_ids has {len(order_ids)} ids; at most {MAX_CANCEL_IDS} orders can be cancelled")
        return {"results": self._exchange.cancel(order_ids)}

    def _get_order(self, call: _Call) -> JsonObject:
        order = self._exchange.orders.get(call.params["order_id"])
        if order is None:
            raise _not_found(f"order {call.params['order_id']} not found")
        return {"order": _order_json(order, self.user_id, self.portfolio_uuid)}

    def _list_orders(self, call: _Call) -> JsonObject:
        statuses = call.args("order_status")
        if "OPEN" in statuses and len(set(statuses)) > 1:
            raise _invalid("OPEN cannot be combined with other order_status values")
        ids, products = call.args("order_ids"), call.args("product_ids")
        types, side = call.args("order_types"), call.arg("order_side")
        start, end = call.time_arg("start_date"), call.time_arg("end_date")
        product_type = call.arg("product_type")
        orders = [
            order
            for order in sorted(self._exchange.orders.values(), key=lambda o: o.sequence, reverse=True)
            if (product_type is None or order.product_type == product_type)
            and (not ids or order.order_id in ids)
            and (not products or order.product_id in products)
            and (not statuses or order.status in statuses)
            and (not types or order.order_type in types)
            and (side is None or order.side == side)
            and (start is None or order.created_time >= start)
            and (end is None or order.created_time <= end)
        ]
        limit = call.int_arg("limit", ORDERS_DEFAULT_LIMIT, ORDERS_MAX_LIMIT)
        page, cursor = _page_by_sequence(orders, lambda o: o.sequence, call.arg("cursor"), limit)
        return {
            "orders": [_order_json(order, self.user_id, self.portfolio_uuid) for order in page],
            "sequence": "0",
            "has_next": bool(cursor),
            "cursor": cursor,
        }

    def _list_fills(self, call: _Call) -> JsonObject:
        ids, trade_ids, products = call.args("order_ids"), call.args("trade_ids"), call.args("product_ids")
        start, end = call.time_arg("start_sequence_timestamp"), call.time_arg("end_sequence_timestamp")
        fills = [
            fill
            for fill in reversed(self._exchange.fills)
            if (not ids or fill.order_id in ids)
            and (not trade_ids or fill.trade_id in trade_ids)
            and (not products or fill.product_id in products)
            and (start is None or fill.trade_time >= start)
            and (end is None or fill.trade_time <= end)
        ]
        limit = call.int_arg("limit", FILLS_DEFAULT_LIMIT, FILLS_MAX_LIMIT)
        page, cursor = _page_by_sequence(fills, lambda f: f.sequence, call.arg("cursor"), limit)
        return {"fills": [_fill_json(fill, self.user_id, self.portfolio_uuid) for fill in page], "cursor": cursor}

    # ---------------------------------------------------------------- endpoints: US futures (CFM)

    def _get_cfm_balance_summary(self, call: _Call) -> JsonObject:
        self._futures_allowed()
        return {"balance_summary": _futures_balance_json(self._futures_cash, list(self._futures_positions.values()))}

    def _get_cfm_positions(self, call: _Call) -> JsonObject:
        self._futures_allowed()
        return {"positions": [_futures_position_json(p) for p in self._open_futures_positions()]}

    def _get_cfm_position(self, call: _Call) -> JsonObject:
        self._futures_allowed()
        position = self._futures_positions.get(call.params["product_id"])
        if position is None or position.contracts == 0:
            raise _not_found(f"no futures position in {call.params['product_id']}")
        return {"position": _futures_position_json(position)}

    # ---------------------------------------------------------------- endpoints: INTX perpetuals

    def _intx_portfolio(self, call: _Call) -> str:
        if not self.derivatives:
            raise _permission_denied("INTX perpetuals are not enabled for this key")
        if call.params["portfolio_uuid"] != self.intx_portfolio_uuid:
            raise _not_found(f"perpetuals portfolio {call.params['portfolio_uuid']} not found")
        return self.intx_portfolio_uuid

    def _get_intx_positions(self, call: _Call) -> JsonObject:
        portfolio = self._intx_portfolio(call)
        positions = list(self._perp_positions.values())
        pnl = sum((p.unrealized_pnl for p in positions), ZERO)
        return {
            "positions": [_perp_position_json(p, portfolio) for p in positions],
            "summary": {"aggregated_pnl": _money(pnl, "USD")},
        }

    def _get_intx_position(self, call: _Call) -> JsonObject:
        portfolio = self._intx_portfolio(call)
        position = self._perp_positions.get(call.params["symbol"])
        if position is None:
            raise _not_found(f"no position in {call.params['symbol']}")
        return {"position": _perp_position_json(position, portfolio)}

    def _get_intx_portfolio(self, call: _Call) -> JsonObject:
        portfolio = self._intx_portfolio(call)
        positions = list(self._perp_positions.values())
        collateral = sum(self._perp_collateral.values(), ZERO)
        pnl = sum((p.unrealized_pnl for p in positions), ZERO)
        notional = sum((p.notional for p in positions), ZERO)
        initial_margin = sum((p.notional / (p.leverage or ONE) for p in positions), ZERO)
        total = collateral + pnl
        buying_power = max(total - initial_margin, ZERO)
        margin_ratio = (initial_margin / total).quantize(Decimal("0.0001")) if total > 0 else ZERO
        summary = {
            "portfolio_uuid": portfolio,
            "collateral": _fmt(collateral),
            "position_notional": _fmt(notional),
            "open_position_notional": _fmt(notional),
            "pending_fees": "0",
            "borrow": "0",
            "accrued_interest": "0",
            "rolling_debt": "0",
            "portfolio_initial_margin": _fmt(margin_ratio),
            "portfolio_im_notional": _money(initial_margin, "USD"),
            "liquidation_percentage": "0",
            "liquidation_buffer": _fmt(buying_power),
            "margin_type": "MARGIN_TYPE_CROSS",
            "margin_flags": "PORTFOLIO_MARGIN_FLAGS_UNSPECIFIED",
            "liquidation_status": "PORTFOLIO_LIQUIDATION_STATUS_NOT_LIQUIDATING",
            "unrealized_pnl": _money(pnl, "USD"),
            "total_balance": _money(total, "USD"),
        }
        return {
            "portfolios": [summary],
            "summary": {
                "unrealized_pnl": _money(pnl, "USD"),
                "buying_power": _money(buying_power, "USD"),
                "total_balance": _money(total, "USD"),
                "max_withdrawal_amount": _money(buying_power, "USD"),
            },
        }

    def _get_intx_balances(self, call: _Call) -> JsonObject:
        portfolio = self._intx_portfolio(call)
        balances = [_collateral_json(asset, quantity) for asset, quantity in self._perp_collateral.items()]
        return {
            "portfolio_balances": [
                {"portfolio_uuid": portfolio, "balances": balances, "is_margin_limit_reached": False}
            ]
        }


# The route table: first match wins, so fixed paths come before "{id}" paths that would also match them.
ROUTES: tuple[_Route, ...] = (
    _route("GET", "/time", _Endpoints._get_time, "public"),
    _route("GET", "/market/products", _Endpoints._get_products, "public"),
    _route("GET", "/market/products/{product_id}", _Endpoints._get_product, "public"),
    _route("GET", "/market/products/{product_id}/candles", _Endpoints._get_candles, "public"),
    _route("GET", "/market/product_book", _Endpoints._get_product_book, "public"),
    _route("GET", "/accounts", _Endpoints._get_accounts),
    _route("GET", "/accounts/{account_uuid}", _Endpoints._get_account),
    _route("GET", "/products", _Endpoints._get_products),
    _route("GET", "/products/{product_id}", _Endpoints._get_product),
    _route("GET", "/products/{product_id}/candles", _Endpoints._get_candles),
    _route("GET", "/product_book", _Endpoints._get_product_book),
    _route("GET", "/best_bid_ask", _Endpoints._get_best_bid_ask),
    _route("POST", "/orders", _Endpoints._post_order, "trade"),
    _route("POST", "/orders/preview", _Endpoints._post_preview, "trade"),
    _route("POST", "/orders/edit", _Endpoints._post_edit, "trade"),
    _route("POST", "/orders/edit_preview", _Endpoints._post_edit_preview, "trade"),
    _route("POST", "/orders/batch_cancel", _Endpoints._post_batch_cancel, "trade"),
    _route("GET", "/orders/historical/batch", _Endpoints._list_orders),
    _route("GET", "/orders/historical/fills", _Endpoints._list_fills),
    _route("GET", "/orders/historical/{order_id}", _Endpoints._get_order),
    _route("GET", "/portfolios", _Endpoints._get_portfolios),
    _route("GET", "/portfolios/{portfolio_uuid}", _Endpoints._get_portfolio_breakdown),
    _route("GET", "/transaction_summary", _Endpoints._get_transaction_summary),
    _route("GET", "/key_permissions", _Endpoints._get_key_permissions, "auth"),
    _route("GET", "/cfm/balance_summary", _Endpoints._get_cfm_balance_summary),
    _route("GET", "/cfm/positions", _Endpoints._get_cfm_positions),
    _route("GET", "/cfm/positions/{product_id}", _Endpoints._get_cfm_position),
    _route("GET", "/intx/positions/{portfolio_uuid}", _Endpoints._get_intx_positions),
    _route("GET", "/intx/positions/{portfolio_uuid}/{symbol}", _Endpoints._get_intx_position),
    _route("GET", "/intx/portfolio/{portfolio_uuid}", _Endpoints._get_intx_portfolio),
    _route("GET", "/intx/balances/{portfolio_uuid}", _Endpoints._get_intx_balances),
)
