"""The live broker: Coinbase Advanced Trade through the official SDK (coinbase-advanced-py's RESTClient).

Idempotency: every create carries the bot's client_order_id. When a create gets no clear answer (timeout, dropped
connection, 5xx, malformed JSON, 429), the order is first looked up by client_order_id; only when the exchange
does not have it is the same request sent again, with the same client_order_id (which Coinbase also refuses to
duplicate). So no path places one logical order twice.

Reduce-only is enforced here (Coinbase orders have no such flag): a spot reduce-only sell may not exceed the base
currency held; a US future's (CFM) reduce-only order must shrink the signed CFM position. Futures orders carry their
leverage and margin type (trader/brokers/coinbase_futures.py) and, like every derivatives call, are refused unless
COINBASE_ENABLE_DERIVATIVES=1; INTX perpetuals are read-only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import TYPE_CHECKING, Any

from trader.brokers.base import Broker
from trader.brokers.coinbase_futures import order_fields, signed_contracts
from trader.brokers.coinbase_wire import (
    edit_error,
    futures_position,
    iso,
    money,
    order_configuration,
    order_from,
    parse_time,
    preview_from,
    product_from,
    request_of,
)
from trader.brokers.rules import check_order, check_reduce_only, fmt
from trader.coinbase.http import (
    CallPolicy,
    Credentials,
    Failure,
    KeySlot,
    NotFound,
    active_key_slot,
    build_rest_client,
    load_credentials,
    parse_server_time,
    plain_json,
)
from trader.domain import (
    AccountSnapshot,
    Balance,
    Candle,
    FeeTier,
    Fill,
    FuturesAccount,
    FuturesPosition,
    KeyPermissions,
    Liquidity,
    Order,
    OrderPreview,
    OrderRequest,
    OrderStatus,
    Position,
    Product,
    Side,
)
from trader.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    InsufficientFunds,
    OrderNotFound,
    OrderRejected,
    UnknownSymbol,
)
from trader.market.source import candles_from_coinbase
from trader.settings import Settings

if TYPE_CHECKING:
    from trader.market.coinbase_ws import CoinbaseWsMarketData

log = logging.getLogger(__name__)

# Coinbase International Exchange stopped taking orders through this API on 1 October 2026 (international
# derivatives moved to a separate gateway): its positions stay readable, an order is refused before anything is sent.
INTX_READ_ONLY = (
    "{symbol}: INTX is read-only since 1 October 2026 (Coinbase moved international derivatives to a separate "
    "gateway); trade US futures (CFM products) with COINBASE_ENABLE_DERIVATIVES=1 instead"
)
CANCEL_BATCH = 100  # POST /orders/batch_cancel takes at most 100 order ids
CANDLES_PER_REQUEST = 300  # the candles endpoint answers at most 350 bars
PAGE_LIMIT = 250
FIND_ORDER_WINDOW = timedelta(days=2)  # how far back a client_order_id lookup scans
ONE_MINUTE = timedelta(minutes=1)
ZERO = Decimal(0)

_FUNDS_ERRORS = {
    "INSUFFICIENT_FUND",
    "INSUFFICIENT_FUNDS",
    "PREVIEW_INSUFFICIENT_FUND",
    "PREVIEW_INSUFFICIENT_FUNDS_FOR_FUTURES",
}
_SYMBOL_ERRORS = {"INVALID_PRODUCT_ID", "UNKNOWN_PRODUCT", "PREVIEW_INVALID_PRODUCT_ID"}


class CoinbaseBroker(Broker):
    """Broker on Coinbase Advanced Trade; `client` is the SDK's RESTClient (or anything with its methods)."""

    name = "coinbase"

    def __init__(
        self,
        client: Any,
        *,
        policy: CallPolicy | None = None,
        derivatives: bool = False,
        key_name: str | None = None,
        market: CoinbaseWsMarketData | None = None,
    ) -> None:
        self.client = client
        self.policy = policy or CallPolicy()
        self.derivatives = derivatives
        # MARKET_DATA=coinbase-ws (runtime.build_bot): the touch from the WebSocket ticker and the one-minute bars
        # fetched once each has closed, instead of a product book and a candle window over REST every cycle.
        self.market = market
        self._key_hint = f"…{key_name[-4:]}" if key_name else "none"
        self._products: dict[str, Product] = {}
        self._client_ids: dict[str, str] = {}  # order_id -> client_order_id, for fills (which carry no client id)
        self._portfolio_uuid: str | None = None
        self.settings: Settings | None = None  # from_settings: what use_key() builds the other key's client from
        self.key_slot: KeySlot = "primary"

    @classmethod
    def from_settings(cls, settings: Settings) -> CoinbaseBroker:
        """On the account's active key (STATE_DIR/ACTIVE_KEY: primary unless perps-bot keys rotate chose backup)."""
        slot = active_key_slot(settings)
        credentials: Credentials | None = load_credentials(settings, slot)
        if credentials is None:
            raise ConfigError(
                "BROKER=coinbase needs COINBASE_API_KEY and COINBASE_API_SECRET, or COINBASE_KEY_FILE (a CDP key)"
                if slot == "primary"
                else "ACTIVE_KEY says backup but no backup key is set: set COINBASE_BACKUP_KEY_FILE (or "
                "COINBASE_BACKUP_API_KEY and COINBASE_BACKUP_API_SECRET), or perps-bot keys rotate --to primary"
            )
        policy = CallPolicy(max_retries=settings.coinbase_max_retries, host=settings.coinbase_api_base)
        broker = cls(
            build_rest_client(settings, credentials),
            policy=policy,
            derivatives=settings.coinbase_enable_derivatives,
            key_name=credentials.name,
        )
        broker.settings, broker.key_slot = settings, slot
        return broker

    @property
    def key_hint(self) -> str:
        """The key in use, by its last four characters: never more."""
        return self._key_hint

    def use_key(self, slot: KeySlot, credentials: Credentials | None = None) -> None:
        """Trade on from now with the other key (the key-compromise rotation): a new REST client; orders in flight on
        the old client finish on it. `credentials`: that key as read elsewhere (Secret blocks), else the slot's."""
        if self.settings is None:
            raise ConfigError("this broker was not built from settings: it has no other key to use")
        credentials = credentials or load_credentials(self.settings, slot)
        if credentials is None:
            raise ConfigError(
                f"no {slot} key is set (COINBASE_BACKUP_KEY_FILE or COINBASE_BACKUP_API_KEY/_SECRET, or "
                "STATE_DIR/backup_key.json from perps-bot keys rotate --to backup)"
            )
        self.client = build_rest_client(self.settings, credentials)
        self._key_hint = f"…{credentials.name[-4:]}"
        self.key_slot = slot

    def __repr__(self) -> str:
        return f"CoinbaseBroker(host={self.policy.host!r}, key={self._key_hint!r}, derivatives={self.derivatives})"

    # --- products and market -----------------------------------------------------------------------------------

    def get_product(self, symbol: str) -> Product:
        product = self._products.get(symbol)
        if product is None:
            product = self._products[symbol] = self._fetch_product(symbol)
        return product

    def _fetch_product(self, symbol: str) -> Product:
        data = self._read(f"get product {symbol}", partial(self.client.get_product, symbol), not_found=symbol)
        return product_from(data)

    def list_products(self) -> list[Product]:
        data = self._read("list products", lambda: self.client.get_products(product_type="SPOT"))
        products = [product_from(p) for p in data.get("products", [])]
        self._products.update({p.symbol: p for p in products})
        return products

    def best_bid_ask(self, symbol: str) -> tuple[Decimal, Decimal]:
        live = self.market.live_quote(symbol) if self.market is not None else None
        if live is not None:
            return live
        data = self._read(f"best bid/ask {symbol}", lambda: self.client.get_best_bid_ask(product_ids=[symbol]))
        for book in data.get("pricebooks", []):
            if book.get("product_id") == symbol and book.get("bids") and book.get("asks"):
                return Decimal(book["bids"][0]["price"]), Decimal(book["asks"][0]["price"])
        raise BrokerUnavailable(f"Coinbase has no best bid/ask for {symbol} right now (empty book)")

    def candles(self, symbol: str, limit: int) -> list[Candle]:
        """The latest `limit` closed one-minute candles, oldest first (the still-open bar is dropped)."""
        if self.market is not None and symbol in self.market.symbols():
            held = self.market.history(symbol, limit)
            if len(held) >= limit:
                return held
        now = self.now()
        end = now.replace(second=0, microsecond=0)  # start of the open bar: everything before it is closed
        rows: dict[datetime, Candle] = {}
        remaining = max(limit, 0)
        while remaining > 0:
            count = min(remaining, CANDLES_PER_REQUEST)
            start = end - ONE_MINUTE * count
            data = self._read(
                f"candles {symbol}",
                partial(
                    self.client.get_candles,
                    symbol,
                    str(int(start.timestamp())),
                    str(int(end.timestamp()) - 1),
                    "ONE_MINUTE",
                ),
                not_found=symbol,
            )
            page = [c for c in candles_from_coinbase(data) if c.start + ONE_MINUTE <= now]
            rows.update({c.start: c for c in page})
            if len(page) < count:
                break  # no older history
            remaining -= count
            end = start
        return sorted(rows.values(), key=lambda c: c.start)[-limit:] if limit > 0 else []

    def now(self) -> datetime:
        return datetime.now(UTC)

    def advance(self) -> bool:
        """With WebSocket market data: fetch the bars that closed since the last cycle (REST, public); a failure is
        logged and the bars held stay (their age is what the staleness guard reads). Live data never runs out."""
        if self.market is not None:
            try:
                self.market.advance()
            except BrokerUnavailable as error:
                log.error("market data refresh failed, the bars held stay: %s", error)
        return True

    def restart_market_data(self) -> None:
        """The feed guard's critical action: reconnect the WebSocket now (nothing to do over REST alone)."""
        if self.market is not None:
            self.market.restart()

    def server_time(self) -> datetime:
        """Coinbase's clock (GET /time), for clock-skew checks."""
        return parse_server_time(self._read("server time", lambda: self.client.get_unix_time()))

    # --- orders ------------------------------------------------------------------------------------------------

    def validate(self, request: OrderRequest) -> None:
        """Product rules and spot reduce-only, checked locally; nothing is sent."""
        self._check(request)

    def preview_order(self, request: OrderRequest) -> OrderPreview:
        """Rule breaks raise; the exchange's preview failure reasons (funds, post-only…) go to errors."""
        fields = order_fields(request, self._check(request))
        data = self._read(
            f"preview order {request.client_order_id}",
            lambda: self.client.preview_order(
                product_id=request.symbol,
                side=request.side.upper(),
                order_configuration=order_configuration(request),
                **fields,
            ),
        )
        return preview_from(data, request, preview_id=str(data.get("preview_id") or ""), errors=data.get("errs", []))

    def place_order(self, request: OrderRequest) -> Order:
        """Submit once; on an unclear answer look the order up by client_order_id before sending again."""
        fields = order_fields(request, self._check(request))  # a future's leverage and margin type
        what = f"create order {request.client_order_id}"
        attempts = self.policy.max_retries + 1
        for attempt in range(attempts):
            result = self.policy.send(
                what,
                lambda: self.client.create_order(
                    client_order_id=request.client_order_id,
                    product_id=request.symbol,
                    side=request.side.upper(),
                    order_configuration=order_configuration(request),
                    **fields,
                ),
            )
            if not isinstance(result, Failure):
                return self._created(plain_json(result), request)
            self.policy.sleep(self.policy.delay(attempt, result))
            existing = self.find_order(request.client_order_id, symbol=request.symbol)
            if existing is not None:
                log.warning(
                    "%s: found on the exchange as %s after %s; not sent again",
                    what,
                    existing.order_id,
                    result.describe(),
                )
                return replace(existing, reduce_only=request.reduce_only)
            if attempt + 1 < attempts:
                log.warning(
                    "%s: not on the exchange after %s; sending it again (same client_order_id)", what, result.describe()
                )
        raise BrokerUnavailable(
            f"Coinbase {what}: no clear answer after {attempts} attempt(s) and not found by client_order_id; "
            "nothing more is sent, the next reconciliation settles it"
        )

    def preview_edit(self, order_id: str, quantity: Decimal, limit_price: Decimal) -> OrderPreview:
        """Preview a new size and price for a resting GTC limit; the preview id is what apply_edit takes."""
        order = self.get_order(order_id)
        request = replace(request_of(order), quantity=quantity, limit_price=limit_price)
        self._check_rules(request)
        data = self._read(
            f"preview edit {order_id}",
            lambda: self.client.preview_edit_order(order_id=order_id, size=fmt(quantity), price=fmt(limit_price)),
        )
        errors = [edit_error(e) for e in data.get("errors", []) or []]
        # Coinbase's edit takes the new values, not a preview id: the id carries them to apply_edit.
        return preview_from(
            data, request, preview_id=f"{fmt(quantity)}@{fmt(limit_price)}", errors=errors, order_id=order_id
        )

    def apply_edit(self, order_id: str, preview_id: str) -> Order:
        size, sep, price = preview_id.partition("@")
        try:
            quantity, limit_price = Decimal(size), Decimal(price)
        except InvalidOperation:
            quantity = limit_price = Decimal("NaN")
        if not sep or not quantity.is_finite() or not limit_price.is_finite():
            raise OrderRejected(
                f"preview id {preview_id!r} is not from a Coinbase edit preview (SIZE@PRICE); run the preview again"
            )
        order = self.get_order(order_id)
        self._check_rules(replace(request_of(order), quantity=quantity, limit_price=limit_price))
        what = f"edit order {order_id}"
        result = self.policy.send(
            what, lambda: self.client.edit_order(order_id=order_id, size=fmt(quantity), price=fmt(limit_price))
        )
        if isinstance(result, Failure):
            current = self.get_order(order_id)
            if current.quantity == quantity and current.limit_price == limit_price:
                return current
            raise BrokerUnavailable(f"Coinbase {what}: {result.describe()}; the order still shows the old values")
        data = plain_json(result)
        if not data.get("success", False):
            reasons = "; ".join(edit_error(e) for e in data.get("errors", []) or []) or "no reason given"
            raise OrderRejected(f"Coinbase refused {what}: {reasons}")
        return self.get_order(order_id)

    def cancel_orders(self, order_ids: list[str]) -> dict[str, bool]:
        """Cancel in batches of 100 (the endpoint's limit); True per id Coinbase accepted the cancel for."""
        unique = list(dict.fromkeys(order_ids))
        result: dict[str, bool] = {}
        for begin in range(0, len(unique), CANCEL_BATCH):
            chunk = unique[begin : begin + CANCEL_BATCH]
            # A repeated cancel is harmless, so the batch is retried like a read.
            data = self._read(f"cancel {len(chunk)} order(s)", partial(self.client.cancel_orders, order_ids=chunk))
            answered = {r.get("order_id"): bool(r.get("success")) for r in data.get("results", [])}
            for order_id in chunk:
                result[order_id] = answered.get(order_id, False)
                if not result[order_id]:
                    reason = next(
                        (r.get("failure_reason") for r in data.get("results", []) if r.get("order_id") == order_id),
                        "no answer",
                    )
                    log.info("cancel %s: not cancelled (%s)", order_id, reason)
        return result

    def get_order(self, order_id: str) -> Order:
        data = self._read(f"get order {order_id}", lambda: self.client.get_order(order_id), not_found=order_id)
        return self._order(data["order"])

    def find_order(self, client_order_id: str, *, symbol: str | None = None) -> Order | None:
        """The order with this client_order_id placed in the last two days, or None."""
        since = self.now() - FIND_ORDER_WINDOW
        for raw in self._orders(product_ids=[symbol] if symbol else None, start_date=iso(since)):
            if raw.get("client_order_id") == client_order_id:
                return self._order(raw)
        return None

    def orders_between(self, start: datetime, end: datetime) -> list[Order]:
        """Every order created in [start, end] on the account, whatever placed it (the key audit's input)."""
        raws = self._orders(start_date=iso(start), end_date=iso(end))
        return [self._order(raw) for raw in raws]

    def list_open_orders(self, symbol: str | None = None) -> list[Order]:
        return [
            self._order(raw) for raw in self._orders(product_ids=[symbol] if symbol else None, order_status=["OPEN"])
        ]

    def list_fills(self, since: datetime | None = None) -> list[Fill]:
        """Every fill after `since` across all cursor pages, oldest first, each trade once."""
        fills: dict[str, Fill] = {}
        cursor: str | None = None
        start = iso(since) if since is not None else None
        while True:
            data = self._read(
                "list fills",
                partial(self.client.get_fills, start_sequence_timestamp=start, limit=PAGE_LIMIT, cursor=cursor),
            )
            for raw in data.get("fills", []) or []:
                fill = self._fill(raw)
                if since is None or fill.filled_at > since:
                    fills[fill.trade_id] = fill
            cursor = data.get("cursor") or None
            if not cursor:
                break
        return sorted(fills.values(), key=lambda f: (f.filled_at, f.trade_id))

    # --- account -----------------------------------------------------------------------------------------------

    def balances(self) -> list[Balance]:
        totals: dict[str, tuple[Decimal, Decimal]] = {}
        cursor: str | None = None
        while True:
            data = self._read("list accounts", partial(self.client.get_accounts, limit=PAGE_LIMIT, cursor=cursor))
            for account in data.get("accounts", []):
                currency = account["currency"]
                available = money(account.get("available_balance"))
                hold = money(account.get("hold"))
                a, h = totals.get(currency, (ZERO, ZERO))
                totals[currency] = (a + available, h + hold)
            cursor = data.get("cursor") or None
            if not data.get("has_next") or not cursor:
                break
        return [Balance(c, a, h) for c, (a, h) in sorted(totals.items())]

    def portfolio_breakdown(self) -> dict[str, Any]:
        """The default portfolio's breakdown (balances, spot positions with cost basis)."""
        uuid = self._default_portfolio()
        data = self._read("portfolio breakdown", lambda: self.client.get_portfolio_breakdown(portfolio_uuid=uuid))
        return dict(data.get("breakdown", {}))

    def positions(self) -> list[Position]:
        """Spot holdings from the portfolio breakdown (non-cash, non-zero); with derivatives on, US futures (CFM)
        positions in signed contracts (short negative) and INTX perps too."""
        positions = []
        for spot in self.portfolio_breakdown().get("spot_positions", []):
            quantity = Decimal(str(spot.get("total_balance_crypto") or 0))
            if spot.get("is_cash") or quantity == 0:
                continue
            entry = money(spot.get("average_entry_price"))
            positions.append(Position(f"{spot['asset']}-USD", quantity, entry))
        if self.derivatives:
            for future in self._futures_positions():
                signed = future.contracts if future.side == "long" else -future.contracts
                positions.append(Position(future.symbol, signed, future.average_entry_price))
            positions.extend(self.perps_positions())
        return sorted(positions, key=lambda p: p.symbol)

    def key_permissions(self) -> KeyPermissions:
        data = self._read("key permissions", lambda: self.client.get_api_key_permissions())
        return KeyPermissions(
            can_view=bool(data.get("can_view")),
            can_trade=bool(data.get("can_trade")),
            can_transfer=bool(data.get("can_transfer")),
            portfolio_type=str(data.get("portfolio_type") or "UNDEFINED"),
        )

    def fee_tier(self) -> FeeTier:
        data = self._read("transaction summary", lambda: self.client.get_transaction_summary(product_type="SPOT"))
        tier = data.get("fee_tier") or {}
        return FeeTier(
            tier=str(tier.get("pricing_tier") or "unknown"),
            maker_fee_rate=Decimal(str(tier.get("maker_fee_rate") or 0)),
            taker_fee_rate=Decimal(str(tier.get("taker_fee_rate") or 0)),
        )

    def account_snapshot(self) -> AccountSnapshot:
        return AccountSnapshot(
            balances=self.balances(),
            permissions=self.key_permissions(),
            fee_tier=self.fee_tier(),
            positions=self.positions(),
            futures=self.futures_account() if self.derivatives else None,
        )

    # --- US futures (CFM) ---------------------------------------------------------------------------------------

    def futures_account(self) -> FuturesAccount:
        """The CFM balance summary and positions (GET /cfm/balance_summary, /cfm/positions)."""
        self._derivatives_on()
        summary = self._read("futures balance summary", lambda: self.client.get_futures_balance_summary())
        data = summary.get("balance_summary") or {}
        return FuturesAccount(
            buying_power=money(data.get("futures_buying_power")),
            total_usd_balance=money(data.get("total_usd_balance")),
            unrealized_pnl=money(data.get("unrealized_pnl")),
            daily_realized_pnl=money(data.get("daily_realized_pnl")),
            initial_margin=money(data.get("initial_margin")),
            available_margin=money(data.get("available_margin")),
            liquidation_threshold=money(data.get("liquidation_threshold")),
            liquidation_buffer_usd=money(data.get("liquidation_buffer_amount")),
            liquidation_buffer_pct=money(data.get("liquidation_buffer_percentage")),
            positions=self._futures_positions(),
        )

    def _futures_positions(self) -> list[FuturesPosition]:
        """GET /cfm/positions: every US futures position."""
        listed = self._read("futures positions", lambda: self.client.list_futures_positions())
        return [futures_position(raw) for raw in listed.get("positions") or []]

    def fresh_product(self, symbol: str) -> Product:
        """The product read now, not from the cache: a future's funding rate and time change every interval."""
        self._derivatives_on()
        return self._fetch_product(symbol)

    def futures_contracts(self, symbol: str) -> Decimal:
        """The CFM position in `symbol` as signed contracts (negative: short; 0 when there is none)."""
        self._derivatives_on()
        try:
            data = plain_json(
                self.policy.read(
                    f"futures position {symbol}", partial(self.client.get_futures_position, product_id=symbol)
                )
            )
        except NotFound:
            return ZERO
        return signed_contracts(data.get("position"))

    def _derivatives_on(self) -> None:
        if not self.derivatives:
            raise ConfigError("derivatives are off: set COINBASE_ENABLE_DERIVATIVES=1 (with futures access granted)")

    # --- perpetuals (INTX) -------------------------------------------------------------------------------------

    def perps_positions(self) -> list[Position]:
        uuid = self._intx_portfolio()
        data = self._read("INTX positions", lambda: self.client.list_perps_positions(portfolio_uuid=uuid))
        return [
            Position(p["symbol"], Decimal(str(p.get("net_size") or 0)), money(p.get("entry_vwap") or p.get("vwap")))
            for p in data.get("positions", []) or []
        ]

    def perps_portfolio_summary(self) -> dict[str, Any]:
        uuid = self._intx_portfolio()
        return dict(self._read("INTX portfolio", lambda: self.client.get_perps_portfolio_summary(portfolio_uuid=uuid)))

    def perps_balances(self) -> dict[str, Any]:
        uuid = self._intx_portfolio()
        return dict(self._read("INTX balances", lambda: self.client.get_perps_portfolio_balances(portfolio_uuid=uuid)))

    def _intx_portfolio(self) -> str:
        if not self.derivatives:
            raise ConfigError(
                "perpetuals are off: set COINBASE_ENABLE_DERIVATIVES=1 only once Coinbase has granted INTX access"
            )
        data = self._read("list portfolios", lambda: self.client.get_portfolios(portfolio_type="INTX"))
        for portfolio in data.get("portfolios", []):
            if portfolio.get("type") == "INTX" and not portfolio.get("deleted"):
                return str(portfolio["uuid"])
        raise BrokerError("Coinbase: this key sees no INTX portfolio; perpetuals need an INTX-enabled account")

    # --- internals ---------------------------------------------------------------------------------------------

    def _read(self, what: str, call: Callable[[], Any], *, not_found: str | None = None) -> dict[str, Any]:
        try:
            return plain_json(self.policy.read(what, call))
        except NotFound as error:
            if not_found is None:
                raise
            if what.startswith(("get product", "candles")):
                raise UnknownSymbol(f"unknown symbol {not_found} on Coinbase ({error})") from None
            raise OrderNotFound(f"order {not_found} not found on Coinbase") from None

    def _check_rules(self, request: OrderRequest) -> Product:
        if request.symbol.upper().endswith("-INTX"):
            raise OrderRejected(INTX_READ_ONLY.format(symbol=request.symbol))
        product = self.get_product(request.symbol)
        if product.futures is not None and not self.derivatives:
            raise OrderRejected(
                f"{product.symbol} is a future: futures orders need COINBASE_ENABLE_DERIVATIVES=1 (nothing sent)"
            )
        if request.limit_price is not None:
            reference = request.limit_price
        else:
            bid, ask = self.best_bid_ask(request.symbol)
            reference = ask if request.side == Side.BUY else bid
        check_order(request, product, reference_price=reference, now=self.now())
        return product

    def _check(self, request: OrderRequest) -> Product:
        product = self._check_rules(request)
        if request.reduce_only:
            if product.futures is not None:
                held = self.futures_contracts(product.symbol)
            else:
                held = sum((b.total for b in self.balances() if b.currency == product.base_currency), ZERO)
            check_reduce_only(request, product, held)
        return product

    def _created(self, data: dict[str, Any], request: OrderRequest) -> Order:
        if data.get("success"):
            body = data.get("response") or data.get("success_response") or {}
            order_id = str(body.get("order_id") or data.get("order_id"))
            self._client_ids[order_id] = request.client_order_id
            try:
                order = self.get_order(order_id)
            except BrokerUnavailable:
                now = self.now()
                order = Order(
                    order_id,
                    request.client_order_id,
                    request.symbol,
                    request.side,
                    request.order_type,
                    request.quantity,
                    OrderStatus.OPEN,
                    now,
                    request.limit_price,
                    request.stop_price,
                    request.time_in_force,
                    request.expire_at,
                    updated_at=now,
                )
            return replace(order, reduce_only=request.reduce_only)
        body = data.get("response") or data.get("error_response") or {}
        code = str(body.get("error") or data.get("failure_reason") or "UNKNOWN_FAILURE_REASON")
        message = str(body.get("message") or body.get("error_details") or "")
        reason = body.get("preview_failure_reason") or body.get("new_order_failure_reason")
        said = f"{code}: {message}" + (f" ({reason})" if reason and reason not in message else "")
        what = f"Coinbase rejected {request.side} {fmt(request.quantity)} {request.symbol} [{request.client_order_id}]"
        if code in _FUNDS_ERRORS or reason in _FUNDS_ERRORS:
            raise InsufficientFunds(f"{what}: {said}")
        if code in _SYMBOL_ERRORS:
            raise UnknownSymbol(f"{what}: {said}")
        raise OrderRejected(f"{what}: {said}")

    def _orders(self, **filters: Any) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            data = self._read(
                "list orders", partial(self.client.list_orders, limit=PAGE_LIMIT, cursor=cursor, **filters)
            )
            yield from data.get("orders", []) or []
            cursor = data.get("cursor") or None
            if not data.get("has_next") or not cursor:
                return

    def _order(self, raw: dict[str, Any]) -> Order:
        order = order_from(raw)
        self._client_ids[order.order_id] = order.client_order_id
        return order

    def _fill(self, raw: dict[str, Any]) -> Fill:
        order_id = str(raw["order_id"])
        client_order_id = self._client_ids.get(order_id)
        if client_order_id is None:
            client_order_id = self.get_order(order_id).client_order_id
        price = Decimal(str(raw["price"]))
        size = Decimal(str(raw["size"]))
        if raw.get("size_in_quote"):
            size = size / price
        return Fill(
            trade_id=str(raw["trade_id"]),
            order_id=order_id,
            client_order_id=client_order_id,
            symbol=str(raw["product_id"]),
            side=Side(str(raw["side"]).lower()),
            quantity=size,
            price=price,
            fee=Decimal(str(raw.get("commission") or 0)),
            liquidity=Liquidity.MAKER if raw.get("liquidity_indicator") == "MAKER" else Liquidity.TAKER,
            filled_at=parse_time(str(raw.get("trade_time") or raw.get("sequence_timestamp"))),
            contract_size=self._contract_size(str(raw["product_id"])),
        )

    def _contract_size(self, symbol: str) -> Decimal:
        """What one unit of a fill's size is of the underlying: a future's contract size, 1 for spot. Only with
        derivatives on can a fill be a future, so only then is an unseen product looked up."""
        product = self._products.get(symbol)
        if product is None and self.derivatives:
            try:
                product = self.get_product(symbol)
            except UnknownSymbol:
                product = None
        return product.futures.contract_size if product is not None and product.futures is not None else Decimal(1)

    def _default_portfolio(self) -> str:
        if self._portfolio_uuid is None:
            data = self._read("list portfolios", lambda: self.client.get_portfolios(portfolio_type="DEFAULT"))
            portfolios = [p for p in data.get("portfolios", []) if not p.get("deleted")]
            if not portfolios:
                raise BrokerError("Coinbase: this key sees no portfolio")
            self._portfolio_uuid = str(portfolios[0]["uuid"])
        return self._portfolio_uuid
