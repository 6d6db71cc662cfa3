"""Wire models and JSON shapes of the Advanced Trade test server: what a request carries and an answer looks like.

Amounts render as Coinbase renders them (plain decimal strings, no trailing zeros), timestamps as RFC3339 with
microseconds and "Z", errors as {"error", "error_details", "message"}. The records the exchange keeps (`ProductSpec`,
`Order`, `Fill`, `PerpPosition`) live here beside the functions that render them, so the exchange and the endpoints
share one shape. Names with a leading underscore are private to the `advanced_trade` package.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, TypeVar

from trader.domain import Candle

JsonObject = dict[str, Any]
ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)
T = TypeVar("T")
STOP_UP, STOP_DOWN = "STOP_DIRECTION_STOP_UP", "STOP_DIRECTION_STOP_DOWN"
CURRENCY_NAMES = {"USD": "US Dollar", "BTC": "Bitcoin", "ETH": "Ethereum", "USDC": "USDC", "SOL": "Solana"}


# --------------------------------------------------------------------------------------------------- small helpers


def _fmt(value: Decimal) -> str:
    """An amount as Coinbase renders it: a plain decimal string without trailing zeros."""
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _money(value: Decimal, currency: str) -> JsonObject:
    return {"value": _fmt(value), "currency": currency}


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(f"{name} is not an RFC3339 timestamp: {text!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _decimal(value: Any, name: str) -> Decimal:
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise _invalid(f"{name} is not a decimal number: {value!r}") from None
    if not result.is_finite():
        raise _invalid(f"{name} is not a finite number: {value!r}")
    return result


def _on_increment(value: Decimal, increment: Decimal) -> bool:
    return value % increment == 0


def _quantize_up(value: Decimal, increment: Decimal) -> Decimal:
    """Round value up to a whole multiple of increment."""
    return (value / increment).to_integral_value(rounding=ROUND_CEILING) * increment


def _compact_json(payload: Any) -> str:
    """JSON without spaces, as Coinbase sends it (the SDK matches '"error_details":"Missing required scopes"')."""
    return json.dumps(payload, separators=(",", ":"))


def _seconds(value: float) -> str:
    """Seconds as a Retry-After value: "2", "0.2"."""
    return format(Decimal(str(value)).normalize(), "f")


# --------------------------------------------------------------------------------------------------- errors


class _ApiError(Exception):
    """An HTTP error answer in Coinbase's shape: {"error", "error_details", "message"}."""

    def __init__(self, status: int, error: str, message: str, details: str = "") -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.details = details

    def body(self) -> JsonObject:
        return {"error": self.error, "error_details": self.details, "message": self.message}


def _invalid(message: str) -> _ApiError:
    return _ApiError(400, "INVALID_ARGUMENT", message, message)


def _not_found(message: str) -> _ApiError:
    return _ApiError(404, "NOT_FOUND", message, message)


def _permission_denied(details: str) -> _ApiError:
    return _ApiError(403, "PERMISSION_DENIED", details, details)


class _Rejected(Exception):
    """A new order that breaks a trading rule: Coinbase answers HTTP 200 with success=false and these reasons."""

    def __init__(self, error: str, preview: str, message: str) -> None:
        super().__init__(message)
        self.error = error  # NewOrderFailureReason, e.g. INSUFFICIENT_FUND
        self.preview = preview  # PreviewFailureReason, e.g. PREVIEW_INSUFFICIENT_FUND
        self.message = message


# --------------------------------------------------------------------------------------------------- answers


@dataclass
class _Answer:
    status: int
    payload: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return self.raw if self.raw is not None else _compact_json(self.payload).encode("utf-8")


# --------------------------------------------------------------------------------------------------- records


@dataclass
class ProductSpec:
    """A spot product's trading rules and status flags."""

    product_id: str
    base_currency: str
    quote_currency: str
    base_increment: Decimal
    quote_increment: Decimal
    base_min_size: Decimal
    base_max_size: Decimal
    quote_min_size: Decimal
    quote_max_size: Decimal
    trading_disabled: bool = False
    cancel_only: bool = False
    limit_only: bool = False
    post_only: bool = False


def _default_products() -> dict[str, ProductSpec]:
    satoshi, cent = Decimal("0.00000001"), Decimal("0.01")
    quote_min, quote_max = Decimal("1"), Decimal("150000000")
    return {
        "BTC-USD": ProductSpec("BTC-USD", "BTC", "USD", satoshi, cent, satoshi, Decimal("3400"), quote_min, quote_max),
        "ETH-USD": ProductSpec("ETH-USD", "ETH", "USD", satoshi, cent, satoshi, Decimal("38000"), quote_min, quote_max),
    }


@dataclass(frozen=True)
class _ConfigSpec:
    """One order_configuration variant: its order type, time in force, fields and required fields."""

    order_type: str
    time_in_force: str
    fields: tuple[str, ...]
    required: tuple[str, ...]


ORDER_CONFIGS: Mapping[str, _ConfigSpec] = {
    "market_market_ioc": _ConfigSpec("MARKET", "IMMEDIATE_OR_CANCEL", ("quote_size", "base_size"), ()),
    "sor_limit_ioc": _ConfigSpec(
        "LIMIT", "IMMEDIATE_OR_CANCEL", ("base_size", "limit_price"), ("base_size", "limit_price")
    ),
    "limit_limit_fok": _ConfigSpec("LIMIT", "FILL_OR_KILL", ("base_size", "limit_price"), ("base_size", "limit_price")),
    "limit_limit_gtc": _ConfigSpec(
        "LIMIT", "GOOD_UNTIL_CANCELLED", ("base_size", "limit_price", "post_only"), ("base_size", "limit_price")
    ),
    "limit_limit_gtd": _ConfigSpec(
        "LIMIT",
        "GOOD_UNTIL_DATE_TIME",
        ("base_size", "limit_price", "end_time", "post_only"),
        ("base_size", "limit_price", "end_time"),
    ),
    "stop_limit_stop_limit_gtc": _ConfigSpec(
        "STOP_LIMIT",
        "GOOD_UNTIL_CANCELLED",
        ("base_size", "limit_price", "stop_price", "stop_direction"),
        ("base_size", "limit_price", "stop_price", "stop_direction"),
    ),
    "stop_limit_stop_limit_gtd": _ConfigSpec(
        "STOP_LIMIT",
        "GOOD_UNTIL_DATE_TIME",
        ("base_size", "limit_price", "stop_price", "end_time", "stop_direction"),
        ("base_size", "limit_price", "stop_price", "end_time", "stop_direction"),
    ),
}


@dataclass(frozen=True)
class _OrderRequest:
    """A parsed POST /orders (or /orders/preview) body."""

    client_order_id: str
    product_id: str
    side: str
    kind: str
    configuration: JsonObject
    base_size: Decimal | None = None
    quote_size: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    stop_direction: str | None = None
    end_time: datetime | None = None
    post_only: bool = False

    @property
    def spec(self) -> _ConfigSpec:
        return ORDER_CONFIGS[self.kind]


@dataclass
class Order:
    """An order as the exchange keeps it (`server.orders`); rendered as Coinbase's order JSON by the server."""

    order_id: str
    client_order_id: str
    product_id: str
    side: str
    kind: str  # the order_configuration key, e.g. "limit_limit_gtc"
    configuration: JsonObject  # the order_configuration fields, kept current by edits
    created_time: datetime
    sequence: int
    base_size: Decimal | None = None
    quote_size: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    stop_direction: str | None = None
    end_time: datetime | None = None
    post_only: bool = False
    status: str = "OPEN"
    trigger_status: str = "INVALID_ORDER_TYPE"
    filled_size: Decimal = ZERO
    filled_value: Decimal = ZERO
    total_fees: Decimal = ZERO
    number_of_fills: int = 0
    last_fill_time: datetime | None = None
    hold: Decimal = ZERO
    hold_currency: str = ""
    cancel_message: str = ""
    edit_history: list[JsonObject] = field(default_factory=list)
    product_type: str = "SPOT"  # FUTURE for an order on a US future (cfm.py)
    leverage: Decimal | None = None  # a future's, as the create carried it
    margin_type: str = ""  # a future's: CROSS

    @property
    def order_type(self) -> str:
        return ORDER_CONFIGS[self.kind].order_type

    @property
    def time_in_force(self) -> str:
        return ORDER_CONFIGS[self.kind].time_in_force

    @property
    def is_open(self) -> bool:
        return self.status == "OPEN"

    @property
    def stop_pending(self) -> bool:
        return self.trigger_status == "STOP_PENDING"

    @property
    def remaining(self) -> Decimal:
        return self.base_size - self.filled_size if self.base_size is not None else ZERO

    @property
    def average_filled_price(self) -> Decimal:
        return self.filled_value / self.filled_size if self.filled_size else ZERO


@dataclass(frozen=True)
class Fill:
    """One execution (`server.fills`); commission is in the product's quote currency."""

    entry_id: str
    trade_id: str
    order_id: str
    product_id: str
    side: str
    price: Decimal
    size: Decimal
    commission: Decimal
    liquidity_indicator: str  # "MAKER" or "TAKER"
    trade_time: datetime
    size_in_quote: bool
    sequence: int


@dataclass
class PerpPosition:
    """An INTX perpetual position served by the /intx endpoints (see `AdvancedTradeServer.add_perp_position`)."""

    symbol: str
    net_size: Decimal
    entry_vwap: Decimal
    mark_price: Decimal
    leverage: Decimal
    margin_type: str = "MARGIN_TYPE_CROSS"
    product_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def notional(self) -> Decimal:
        return abs(self.net_size) * self.mark_price

    @property
    def unrealized_pnl(self) -> Decimal:
        return (self.mark_price - self.entry_vwap) * self.net_size


@dataclass
class FuturesPosition:
    """A US futures (CFM) position served by the /cfm endpoints (`AdvancedTradeServer.add_futures_position`):
    perpetual-style contracts, each `contract_size` of the underlying (0.01 BTC for the nano Bitcoin perp)."""

    product_id: str
    side: str  # "LONG" or "SHORT"
    contracts: Decimal
    avg_entry_price: Decimal
    current_price: Decimal
    contract_size: Decimal = Decimal("0.01")
    daily_realized_pnl: Decimal = ZERO
    expiration_time: datetime = datetime(2030, 12, 20, 16, 0, tzinfo=UTC)  # a perpetual-style contract's far date

    @property
    def notional(self) -> Decimal:
        return self.contracts * self.contract_size * self.current_price

    @property
    def unrealized_pnl(self) -> Decimal:
        sign = ONE if self.side == "LONG" else -ONE
        return (self.current_price - self.avg_entry_price) * self.contracts * self.contract_size * sign


@dataclass
class FuturesProduct:
    """A US perpetual-style future the server lists (`AdvancedTradeServer.set_futures_product`): its price and
    funding, served by GET /products/{id} with future_product_details."""

    product_id: str
    price: Decimal
    funding_rate: Decimal
    funding_time: datetime
    contract_size: Decimal = Decimal("0.01")
    max_leverage: Decimal = Decimal("10")


FUTURES_INITIAL_MARGIN_RATE = Decimal("0.10")  # of notional, the test exchange's intraday rate
FUTURES_MAINTENANCE_MARGIN_RATE = Decimal("0.05")  # below this much margin the position is liquidated
FUTURES_MIN_CONTRACTS, FUTURES_MAX_CONTRACTS = ONE, Decimal("10000")  # whole contracts (base_increment 1)
FUTURES_PRICE_INCREMENT = Decimal("5")  # the nano perps' tick


# --------------------------------------------------------------------------------------------------- JSON shapes


def _parse_order_request(body: JsonObject) -> _OrderRequest:
    """The order fields of a create/preview body; _Rejected for an unsupported configuration, 400 for bad numbers."""
    configuration = body.get("order_configuration")
    if not isinstance(configuration, dict) or len(configuration) != 1:
        raise _Rejected("UNSUPPORTED_ORDER_CONFIGURATION", "PREVIEW_INVALID_ORDER_CONFIG", "One order_configuration")
    kind, fields = next(iter(configuration.items()))
    spec = ORDER_CONFIGS.get(kind)
    if spec is None or not isinstance(fields, dict):
        raise _Rejected("UNSUPPORTED_ORDER_CONFIGURATION", "PREVIEW_INVALID_ORDER_CONFIG", f"Unsupported {kind}")
    present = {name: fields[name] for name in spec.fields if fields.get(name) not in (None, "")}
    missing = [name for name in spec.required if name not in present]
    if kind == "market_market_ioc" and len(present) != 1:
        missing = ["exactly one of quote_size and base_size"]
    if missing:
        raise _Rejected("INVALID_REQUEST", "PREVIEW_INVALID_ORDER_CONFIG", f"{kind} needs {', '.join(missing)}")

    def number(name: str) -> Decimal | None:
        return _decimal(present[name], f"{kind}.{name}") if name in present else None

    stop_direction = present.get("stop_direction")
    if stop_direction is not None and stop_direction not in (STOP_UP, STOP_DOWN):
        raise _Rejected("UNSUPPORTED_ORDER_CONFIGURATION", "PREVIEW_INVALID_ORDER_CONFIG", "Invalid stop_direction")
    end_time = _parse_time(str(present["end_time"]), f"{kind}.end_time") if "end_time" in present else None
    return _OrderRequest(
        client_order_id=str(body.get("client_order_id") or ""),
        product_id=str(body.get("product_id") or ""),
        side=str(body.get("side") or ""),
        kind=kind,
        configuration=present,
        base_size=number("base_size"),
        quote_size=number("quote_size"),
        limit_price=number("limit_price"),
        stop_price=number("stop_price"),
        stop_direction=stop_direction,
        end_time=end_time,
        post_only=present.get("post_only") in (True, "true", "True"),
    )


def _order_created(order: Order) -> JsonObject:
    return {
        "success": True,
        "success_response": {
            "order_id": order.order_id,
            "product_id": order.product_id,
            "side": order.side,
            "client_order_id": order.client_order_id,
        },
        "order_configuration": {order.kind: order.configuration},
    }


def _order_failed(rejection: _Rejected, configuration: Any) -> JsonObject:
    answer: JsonObject = {
        "success": False,
        "failure_reason": "UNKNOWN_FAILURE_REASON",
        "order_id": "",
        "error_response": {
            "error": rejection.error,
            "message": rejection.message,
            "error_details": "",
            "preview_failure_reason": rejection.preview,
            "new_order_failure_reason": rejection.error,
        },
    }
    if isinstance(configuration, dict) and configuration:
        answer["order_configuration"] = configuration
    return answer


def _order_json(order: Order, user_id: str, portfolio_id: str) -> JsonObject:
    size = order.base_size
    completion = (
        order.filled_size / size * HUNDRED if size else (HUNDRED if order.status == "FILLED" else ZERO)
    ).quantize(Decimal("0.01"))
    after_fees = order.filled_value + order.total_fees if order.side == "BUY" else order.filled_value - order.total_fees
    return {
        "order_id": order.order_id,
        "product_id": order.product_id,
        "user_id": user_id,
        "order_configuration": {order.kind: order.configuration},
        "side": order.side,
        "client_order_id": order.client_order_id,
        "status": order.status,
        "time_in_force": order.time_in_force,
        "created_time": _rfc3339(order.created_time),
        "completion_percentage": _fmt(completion),
        "filled_size": _fmt(order.filled_size),
        "average_filled_price": _fmt(order.average_filled_price),
        "fee": "",
        "number_of_fills": str(order.number_of_fills),
        "filled_value": _fmt(order.filled_value),
        "pending_cancel": False,
        "size_in_quote": order.quote_size is not None,
        "total_fees": _fmt(order.total_fees),
        "size_inclusive_of_fees": order.quote_size is not None and order.side == "BUY",
        "total_value_after_fees": _fmt(after_fees),
        "trigger_status": order.trigger_status,
        "order_type": order.order_type,
        "reject_reason": "REJECT_REASON_UNSPECIFIED",
        "settled": not order.is_open,
        "product_type": order.product_type,
        "reject_message": "",
        "cancel_message": order.cancel_message,
        "order_placement_source": "RETAIL_ADVANCED",
        "outstanding_hold_amount": _fmt(order.hold),
        "is_liquidation": False,
        "last_fill_time": _rfc3339(order.last_fill_time) if order.last_fill_time else None,
        "edit_history": list(order.edit_history),
        "leverage": _fmt(order.leverage) if order.leverage is not None else "",
        "margin_type": order.margin_type or "UNKNOWN_MARGIN_TYPE",
        "retail_portfolio_id": portfolio_id,
        "originating_order_id": "",
        "attached_order_id": "",
    }


def _user_order_json(order: Order, portfolio_id: str) -> JsonObject:
    """An order as the WebSocket `user` channel reports it: cumulative figures, no fills (those come over REST)."""
    size = order.base_size
    leaves = order.remaining if order.is_open else ZERO
    after_fees = order.filled_value + order.total_fees if order.side == "BUY" else order.filled_value - order.total_fees
    completion = (order.filled_size / size * HUNDRED if size else ZERO).quantize(Decimal("0.01"))
    return {
        "order_id": order.order_id,
        "client_order_id": order.client_order_id,
        "product_id": order.product_id,
        "product_type": order.product_type,
        "order_side": order.side,
        "order_type": order.order_type,
        "status": order.status,
        "time_in_force": order.time_in_force,
        "trigger_status": order.trigger_status,
        "creation_time": _rfc3339(order.created_time),
        "end_time": _rfc3339(order.end_time) if order.end_time else "0001-01-01T00:00:00Z",
        "start_time": "0001-01-01T00:00:00Z",
        "limit_price": _fmt(order.limit_price or ZERO),
        "stop_price": _fmt(order.stop_price or ZERO),
        "post_only": str(order.post_only).lower(),
        "cumulative_quantity": _fmt(order.filled_size),
        "leaves_quantity": _fmt(leaves),
        "avg_price": _fmt(order.average_filled_price),
        "filled_value": _fmt(order.filled_value),
        "total_fees": _fmt(order.total_fees),
        "total_value_after_fees": _fmt(after_fees),
        "number_of_fills": str(order.number_of_fills),
        "completion_percentage": _fmt(completion),
        "outstanding_hold_amount": _fmt(order.hold),
        "cancel_reason": order.cancel_message,
        "reject_reason": "",
        "retail_portfolio_id": portfolio_id,
        "contract_expiry_type": "UNKNOWN_CONTRACT_EXPIRY_TYPE",
        "risk_managed_by": "UNKNOWN_RISK_MANAGEMENT_TYPE",
    }


def _fill_json(fill: Fill, user_id: str, portfolio_id: str) -> JsonObject:
    return {
        "entry_id": fill.entry_id,
        "trade_id": fill.trade_id,
        "order_id": fill.order_id,
        "trade_time": _rfc3339(fill.trade_time),
        "trade_type": "FILL",
        "price": _fmt(fill.price),
        "size": _fmt(fill.size),
        "commission": _fmt(fill.commission),
        "product_id": fill.product_id,
        "sequence_timestamp": _rfc3339(fill.trade_time),
        "liquidity_indicator": fill.liquidity_indicator,
        "size_in_quote": fill.size_in_quote,
        "user_id": user_id,
        "side": fill.side,
        "retail_portfolio_id": portfolio_id,
    }


def _candle_json(candle: Candle) -> JsonObject:
    return {
        "start": str(int(candle.start.timestamp())),
        "low": _fmt(candle.low),
        "high": _fmt(candle.high),
        "open": _fmt(candle.open),
        "close": _fmt(candle.close),
        "volume": _fmt(candle.volume),
    }


def _aggregate(bars: list[Candle], seconds: int) -> list[Candle]:
    """One-minute bars (oldest first) merged into `seconds`-long candles aligned on the epoch."""
    merged: list[Candle] = []
    for bar in bars:
        start = datetime.fromtimestamp(int(bar.start.timestamp()) // seconds * seconds, tz=UTC)
        if merged and merged[-1].start == start:
            last = merged[-1]
            high, low = max(last.high, bar.high), min(last.low, bar.low)
            merged[-1] = Candle(start, last.open, high, low, bar.close, last.volume + bar.volume)
        else:
            merged.append(replace(bar, start=start))
    return merged


def _page_by_sequence(
    items: list[T], sequence: Callable[[T], int], cursor: str | None, limit: int
) -> tuple[list[T], str]:
    """A page of `items` (newest first); the cursor is the sequence of the last item served, "" on the last page."""
    if cursor:
        try:
            below = int(cursor)
        except ValueError:
            raise _invalid(f"cursor {cursor!r} is not valid") from None
        items = [item for item in items if sequence(item) < below]
    page = items[:limit]
    return page, str(sequence(page[-1])) if len(items) > limit else ""


def _product_json(spec: ProductSpec, price: Decimal, bars: list[Candle]) -> JsonObject:
    """A spot product as GET /products/{product_id} renders it; 24h figures from the last 1440 one-minute bars."""
    day = bars[-1440:]
    volume = sum((bar.volume for bar in day), ZERO)
    change = (price - day[0].open) / day[0].open * HUNDRED
    return {
        "product_id": spec.product_id,
        "price": _fmt(price),
        "price_percentage_change_24h": _fmt(change.quantize(Decimal("0.00000001"))),
        "volume_24h": _fmt(volume),
        "volume_percentage_change_24h": "0",
        "base_increment": _fmt(spec.base_increment),
        "quote_increment": _fmt(spec.quote_increment),
        "quote_min_size": _fmt(spec.quote_min_size),
        "quote_max_size": _fmt(spec.quote_max_size),
        "base_min_size": _fmt(spec.base_min_size),
        "base_max_size": _fmt(spec.base_max_size),
        "base_name": CURRENCY_NAMES.get(spec.base_currency, spec.base_currency),
        "quote_name": CURRENCY_NAMES.get(spec.quote_currency, spec.quote_currency),
        "watched": False,
        "is_disabled": False,
        "new": False,
        "status": "online",
        "cancel_only": spec.cancel_only,
        "limit_only": spec.limit_only,
        "post_only": spec.post_only,
        "trading_disabled": spec.trading_disabled,
        "auction_mode": False,
        "product_type": "SPOT",
        "quote_currency_id": spec.quote_currency,
        "base_currency_id": spec.base_currency,
        "fcm_trading_session_details": None,
        "mid_market_price": "",
        "alias": "",
        "alias_to": [],
        "base_display_symbol": spec.base_currency,
        "quote_display_symbol": spec.quote_currency,
        "view_only": False,
        "price_increment": _fmt(spec.quote_increment),
        "display_name": spec.product_id,
        "product_venue": "CBE",
        "approximate_quote_24h_volume": _fmt((volume * price).quantize(spec.quote_increment)),
    }


def _perp_position_json(position: PerpPosition, portfolio_uuid: str) -> JsonObject:
    """An INTX perpetual position as GET /intx/positions renders it."""
    leverage = position.leverage or ONE
    initial_margin = position.notional / leverage
    liquidation = position.entry_vwap * (ONE - ONE / leverage if position.net_size > 0 else ONE + ONE / leverage)
    return {
        "product_id": position.symbol,
        "product_uuid": position.product_uuid,
        "portfolio_uuid": portfolio_uuid,
        "symbol": position.symbol,
        "vwap": _money(position.entry_vwap, "USD"),
        "entry_vwap": _money(position.entry_vwap, "USD"),
        "position_side": "POSITION_SIDE_LONG" if position.net_size > 0 else "POSITION_SIDE_SHORT",
        "margin_type": position.margin_type,
        "net_size": _fmt(position.net_size),
        "buy_order_size": "0",
        "sell_order_size": "0",
        "im_contribution": _fmt(ONE / leverage),
        "unrealized_pnl": _money(position.unrealized_pnl, "USD"),
        "mark_price": _money(position.mark_price, "USD"),
        "liquidation_price": _money(liquidation.quantize(Decimal("0.01")), "USD"),
        "leverage": _fmt(leverage),
        "im_notional": _money(initial_margin, "USD"),
        "mm_notional": _money(initial_margin / 2, "USD"),
        "position_notional": _money(position.notional, "USD"),
        "aggregated_pnl": _money(position.unrealized_pnl, "USD"),
    }


def _collateral_json(asset: str, quantity: Decimal) -> JsonObject:
    """One collateral balance as GET /intx/balances renders it."""
    return {
        "asset": {
            "asset_id": asset,
            "asset_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, asset)),
            "asset_name": asset,
            "status": "ACTIVE",
            "collateral_weight": "1",
            "account_collateral_limit": "",
            "ecosystem_collateral_limit_breached": False,
            "asset_icon_url": "",
            "supported_networks_enabled": True,
        },
        "quantity": _fmt(quantity),
        "hold": "0",
        "transfer_hold": "0",
        "collateral_value": _fmt(quantity),
        "collateral_weight": "1",
        "max_withdraw_amount": _fmt(quantity),
        "loan": "0",
        "loan_collateral_requirement_usd": "0",
        "pledged_quantity": "0",
    }


def _futures_position_json(position: FuturesPosition) -> JsonObject:
    """A CFM position as GET /cfm/positions renders it (FCMPosition in the SDK's types)."""
    return {
        "product_id": position.product_id,
        "expiration_time": _rfc3339(position.expiration_time),
        "side": f"FUTURES_POSITION_SIDE_{position.side}",
        "number_of_contracts": _fmt(position.contracts),
        "current_price": _fmt(position.current_price),
        "avg_entry_price": _fmt(position.avg_entry_price),
        "unrealized_pnl": _fmt(position.unrealized_pnl),
        "daily_realized_pnl": _fmt(position.daily_realized_pnl),
    }


def _futures_balance_json(cash: Decimal, positions: list[FuturesPosition]) -> JsonObject:
    """GET /cfm/balance_summary's balance_summary (FCMBalanceSummary): margins from the positions' notional."""
    unrealized = sum((p.unrealized_pnl for p in positions), ZERO)
    equity = cash + unrealized
    initial = sum((p.notional * FUTURES_INITIAL_MARGIN_RATE for p in positions), ZERO)
    maintenance = sum((p.notional * FUTURES_MAINTENANCE_MARGIN_RATE for p in positions), ZERO)
    buffer = equity - maintenance
    percentage = (buffer / equity * HUNDRED).quantize(Decimal("0.01")) if equity > 0 else ZERO
    return {
        "futures_buying_power": _money(max(equity - initial, ZERO), "USD"),
        "total_usd_balance": _money(cash, "USD"),
        "cbi_usd_balance": _money(ZERO, "USD"),
        "cfm_usd_balance": _money(cash, "USD"),
        "total_open_orders_hold_amount": _money(ZERO, "USD"),
        "unrealized_pnl": _money(unrealized, "USD"),
        "daily_realized_pnl": _money(sum((p.daily_realized_pnl for p in positions), ZERO), "USD"),
        "initial_margin": _money(initial, "USD"),
        "available_margin": _money(max(equity - initial, ZERO), "USD"),
        "liquidation_threshold": _money(maintenance, "USD"),
        "liquidation_buffer_amount": _money(buffer, "USD"),
        "liquidation_buffer_percentage": _fmt(percentage),
    }


def _futures_product_json(product: FuturesProduct) -> JsonObject:
    """GET /products/{id} for a perpetual-style future: the spot fields the broker reads, and
    future_product_details with perpetual_details (funding rate and time, max leverage)."""
    funding = {"funding_rate": _fmt(product.funding_rate), "funding_time": _rfc3339(product.funding_time)}
    return {
        "product_id": product.product_id,
        "price": _fmt(product.price),
        "base_increment": "1",
        "quote_increment": _fmt(FUTURES_PRICE_INCREMENT),
        "price_increment": _fmt(FUTURES_PRICE_INCREMENT),
        "base_min_size": _fmt(FUTURES_MIN_CONTRACTS),
        "base_max_size": _fmt(FUTURES_MAX_CONTRACTS),
        "quote_min_size": "0",
        "base_currency_id": "",
        "quote_currency_id": "USD",
        "status": "online",
        "trading_disabled": False,
        "cancel_only": False,
        "limit_only": False,
        "post_only": False,
        "product_type": "FUTURE",
        "future_product_details": {
            "venue": "cde",
            "contract_code": product.product_id.split("-")[0],
            "contract_size": _fmt(product.contract_size),
            "contract_root_unit": "BTC",
            "contract_expiry_type": "PERPETUAL",
            "funding_interval": "3600s",
            **funding,
            "intraday_margin_rate": {"long_margin_rate": "0.1", "short_margin_rate": "0.1"},
            "overnight_margin_rate": {"long_margin_rate": "0.2", "short_margin_rate": "0.2"},
            "perpetual_details": {**funding, "open_interest": "0", "max_leverage": _fmt(product.max_leverage)},
        },
    }


def preview_json(
    side: object,
    base: Decimal,
    value: Decimal,
    commission: Decimal,
    errors: list[str],
    touch: tuple[Decimal, Decimal],
    **more: str,
) -> JsonObject:
    """POST /orders/preview's answer: the total (value plus the commission for a buy, minus for a sell), the sizes,
    the touch, the failure reasons, and `more` (a future's margin and leverage)."""
    return {
        "order_total": _fmt(value + commission if side == "BUY" else value - commission),
        "commission_total": _fmt(commission),
        "errs": errors,
        "warning": [],
        "quote_size": _fmt(value),
        "base_size": _fmt(base),
        "best_bid": _fmt(touch[0]),
        "best_ask": _fmt(touch[1]),
        "is_max": False,
        **more,
        "preview_id": str(uuid.uuid4()),
        "slippage": "0",
    }
