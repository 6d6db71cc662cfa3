"""The paper-trading exchange: Coinbase's product rules, fees and order types, filled against replayed candles.

Prices and fills:
- best bid/ask: the current close -/+ half of `spread_bps`, bid rounded down and ask up to the quote increment;
  a live source (MARKET_DATA=coinbase) gives Coinbase's own best bid/ask instead.
- market orders fill at once as taker at the close (live: the best ask for a buy, bid for a sell) +/-
  `slippage_bps` (a buy pays more), rounded against the trader (buy up, sell down) to the quote increment.
- a limit order that crosses the best bid/ask fills at once as taker at the better of its limit and the market
  price; otherwise it rests as maker (IOC: cancelled instead; post_only: rejected instead of crossing).
- a stop-limit rests untriggered until a candle reaches the stop (buy: high >= stop, sell: low <= stop); if its
  limit is marketable at the stop it fills in that bar as taker at the better of the limit and the stop
  +/- slippage, otherwise it rests as a limit from the next bar on.
- resting limits are matched once against every new candle, lazily at the start of every public call (buy:
  low <= limit, sell: high >= limit; maker at the limit price). A GTD order that is still open when a bar
  closes at or after its expire_at expires.
- fee = quantity x price x rate, rounded half-up to the quote increment. Orders fill in full.

Persistence: trader/brokers/paper_state.py (the account written after every call that changed it, the market clock
beside it).
"""

from __future__ import annotations

import copy
import logging
import uuid
from bisect import bisect_right
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Literal

from trader.brokers import futures as fx
from trader.brokers.base import Broker
from trader.brokers.paper_futures import FuturesBook, Held
from trader.brokers.paper_state import PaperAccountFile
from trader.brokers.rules import check_order, check_reduce_only, fmt
from trader.domain import (
    AccountSnapshot,
    Balance,
    Candle,
    FeeTier,
    Fill,
    FundingPayment,
    FuturesAccount,
    FuturesTerms,
    KeyPermissions,
    Liquidity,
    Order,
    OrderPreview,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Product,
    Side,
    TimeInForce,
)
from trader.errors import InsufficientFunds, OrderNotFound, OrderRejected, UnknownSymbol
from trader.market.source import MarketDataSource

log = logging.getLogger(__name__)

DEFAULT_PRODUCTS: tuple[Product, ...] = (
    Product(
        symbol="BTC-USD",
        base_currency="BTC",
        quote_currency="USD",
        base_increment=Decimal("0.00000001"),
        quote_increment=Decimal("0.01"),
        base_min_size=Decimal("0.00001"),
        base_max_size=Decimal("3400"),
        quote_min_size=Decimal("1"),
    ),
    Product(
        symbol="ETH-USD",
        base_currency="ETH",
        quote_currency="USD",
        base_increment=Decimal("0.00000001"),
        quote_increment=Decimal("0.01"),
        base_min_size=Decimal("0.0001"),
        base_max_size=Decimal("50000"),
        quote_min_size=Decimal("1"),
    ),
)
# The perpetual-style future the replay carries (COINBASE_ENABLE_DERIVATIVES=1 only): Coinbase's nano Bitcoin perp
# shape, 0.01 BTC a contract; its index for the paper funding rate is BTC-USD (trader/brokers/futures.py).
FUTURES_PRODUCTS: tuple[Product, ...] = (
    Product(
        symbol="BIP-20DEC30-CDE",
        base_currency="BIP",
        quote_currency="USD",
        base_increment=Decimal("1"),
        quote_increment=Decimal("5"),
        base_min_size=Decimal("1"),
        base_max_size=Decimal("10000"),
        quote_min_size=Decimal("0"),
        futures=FuturesTerms(
            contract_size=Decimal("0.01"),
            max_leverage=Decimal("10"),
            initial_margin_rate=Decimal("0.10"),
            maintenance_margin_rate=Decimal("0.05"),
            underlying="BTC-USD",
        ),
    ),
)
FUTURE_SYMBOLS = frozenset(p.symbol for p in FUTURES_PRODUCTS)
DEFAULT_BALANCES = {"USD": Decimal("100000")}
FEE_STEP = Decimal("0.01")  # futures fees are in cents (their quote increment is the price tick)
BPS = Decimal("10000")
AVERAGE_PRICE_STEP = Decimal("0.00000001")


def _round(value: Decimal, increment: Decimal, rounding: str) -> Decimal:
    return (value / increment).to_integral_value(rounding=rounding) * increment


@dataclass(frozen=True)
class _Plan:
    """What placing a request would do right now."""

    action: Literal["fill", "rest", "cancel"]
    price: Decimal  # fill price, or the limit price of a resting/cancelled order
    liquidity: Liquidity
    triggered: bool = True  # False: a stop-limit waiting for its stop
    error: str | None = None  # post_only that would cross


class SimulatedExchange(PaperAccountFile, Broker):
    """A paper exchange over a MarketDataSource: balances, holds, orders, fills and positions in memory."""

    name = "simulated"

    def __init__(
        self,
        market: MarketDataSource,
        *,
        products: list[Product] | None = None,
        balances: dict[str, Decimal] | None = None,
        maker_fee_rate: Decimal = Decimal("0.004"),
        taker_fee_rate: Decimal = Decimal("0.006"),
        slippage_bps: Decimal = Decimal("5"),
        spread_bps: Decimal = Decimal("1"),
        state_path: Path | None = None,
        read_only: bool = False,
        derivatives: bool = False,
    ) -> None:
        self.market = market
        if products is None:
            listed = set(market.symbols())
            products = [*DEFAULT_PRODUCTS, *(p for p in FUTURES_PRODUCTS if derivatives and p.symbol in listed)]
        self._products = {p.symbol: p for p in products}
        self.derivatives = derivatives  # COINBASE_ENABLE_DERIVATIVES: futures orders are refused without it
        self.maker_fee_rate = maker_fee_rate
        self.taker_fee_rate = taker_fee_rate
        self.slippage_bps = slippage_bps
        self.spread_bps = spread_bps
        self.state_path = Path(state_path) if state_path is not None else None
        self.read_only = read_only  # load the paper account but never write it (checklists beside the bot)
        self._buy_slippage = 1 + slippage_bps / BPS
        self._sell_slippage = 1 - slippage_bps / BPS
        self._half_spread = spread_bps / 2 / BPS
        self._totals: dict[str, Decimal] = dict(balances if balances is not None else DEFAULT_BALANCES)
        self._held: dict[str, Decimal] = {}
        self._holds: dict[str, tuple[str, Decimal]] = {}  # order_id -> (currency, amount)
        self._orders: dict[str, Order] = {}
        self._requests: dict[str, OrderRequest] = {}  # as placed; idempotency compares against these
        self._by_client: dict[str, str] = {}
        self._open: dict[str, Order] = {}  # resting orders, oldest first
        self._triggered: set[str] = set()  # resting orders working as a limit (stop-limits: stop reached)
        self._fills: list[Fill] = []  # in filled_at order
        # Encoded once: fills and closed orders never change, so a save re-encodes only the open orders.
        self._saved_entries: dict[str, dict[str, Any]] = {}  # order_id or trade_id -> its JSON entry
        self._positions: dict[str, tuple[Decimal, Decimal]] = {}  # symbol -> (quantity, average entry price)
        self._edit_previews: dict[str, tuple[str, Decimal, Decimal]] = {}  # preview_id -> (order_id, qty, price)
        # Futures: leverage, funding, the day's realized PnL, liquidations (trader/brokers/paper_futures.py).
        self._book = FuturesBook(funding_through=market.now() if derivatives else None)
        self._order_seq = 0
        self._trade_seq = 0
        self._matched_cursor = market.cursor
        self._dirty = True  # a new paper account is written on first use
        self._clock_dirty = False  # only the market clock moved since the last write
        self._saves = 0  # account writes so far (the clock file names the one it follows)
        if self.state_path is not None and self.state_path.exists():
            self._load(self.state_path)
            self._dirty = False

    # --- products and market -----------------------------------------------------------------------------------

    def get_product(self, symbol: str) -> Product:
        """The product's rules; a future's with its funding rate and time now."""
        product = self._products.get(symbol)
        if product is None:
            hint = " (a future: set COINBASE_ENABLE_DERIVATIVES=1)" if symbol in FUTURE_SYMBOLS else ""
            raise UnknownSymbol(f"unknown symbol {symbol}{hint}; available: {', '.join(self._products)}")
        if product.futures is not None:
            now = self.market.now()
            return replace(product, funding_rate=self._funding_rate(product), funding_time=fx.next_funding_time(now))
        return product

    def list_products(self) -> list[Product]:
        return list(self._products.values())

    def best_bid_ask(self, symbol: str) -> tuple[Decimal, Decimal]:
        """The current close -/+ half the spread, on the quote increment."""
        self._sync()
        bid_ask = self._bid_ask(self.get_product(symbol))
        self._persist()
        return bid_ask

    def candles(self, symbol: str, limit: int) -> list[Candle]:
        self._sync()
        self.get_product(symbol)
        history = self.market.history(symbol, limit)
        self._persist()
        return history

    def now(self) -> datetime:
        return self.market.now()

    def restart_market_data(self) -> None:
        """Reconnect and refetch the live feed (MARKET_DATA=coinbase-ws: the WebSocket too; coinbase: a REST
        refetch); a replay has nothing to reconnect."""
        restart = getattr(self.market, "restart", None) or getattr(self.market, "refresh", None)
        if restart is not None:
            restart()

    def advance(self) -> bool:
        """Step the market one bar and match resting orders against it; False when the replay is exhausted."""
        moved = self.market.advance()
        self._sync()
        self._persist()
        return moved

    # --- orders ------------------------------------------------------------------------------------------------

    def validate(self, request: OrderRequest) -> None:
        """Raise OrderRejected naming the product rule the request breaks; records nothing."""
        self._sync()
        self._validate(request)

    def preview_order(self, request: OrderRequest) -> OrderPreview:
        """Validate (raises on rule and reduce-only breaks) and estimate; funds and post-only problems go to errors."""
        self._sync()
        product = self._validate(request)
        self._check_reduce_only(request, product)
        plan = self._plan(request, product)
        errors = [plan.error] if plan.error else []
        if problem := self._funds_problem(request, product, plan):
            errors.append(problem)
        self._persist()
        return self._preview(f"preview-{uuid.uuid4()}", request, product, plan, errors)

    def place_order(self, request: OrderRequest) -> Order:
        """Submit; idempotent on client_order_id. Rejections raise and record nothing."""
        self._sync()
        existing = self._by_client.get(request.client_order_id)
        if existing is not None:
            if self._requests[existing] != request:
                raise OrderRejected(
                    f"client_order_id {request.client_order_id} is already used by order {existing} "
                    "with a different request; use a new client_order_id"
                )
            self._persist()
            return copy.copy(self._orders[existing])
        product = self._validate(request)
        self._check_reduce_only(request, product)
        plan = self._plan(request, product)
        if plan.error:
            raise OrderRejected(plan.error)
        if problem := self._funds_problem(request, product, plan):
            raise InsufficientFunds(problem)
        now = self.market.now()
        self._order_seq += 1
        order = Order(
            order_id=f"sim-order-{self._order_seq}",
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            order_type=request.order_type,
            quantity=request.quantity,
            status=OrderStatus.OPEN,
            created_at=now,
            limit_price=request.limit_price,
            stop_price=request.stop_price,
            time_in_force=request.time_in_force,
            expire_at=request.expire_at,
            reduce_only=request.reduce_only,
            updated_at=now,
        )
        self._orders[order.order_id] = order
        self._requests[order.order_id] = request
        self._by_client[request.client_order_id] = order.order_id
        self._execute(order, product, plan, now)
        self._dirty = True
        self._persist()
        return copy.copy(order)

    def preview_edit(self, order_id: str, quantity: Decimal, limit_price: Decimal) -> OrderPreview:
        """Preview a new size and limit for a resting limit order; the preview id is what apply_edit takes."""
        self._sync()
        order = self._editable(order_id)
        request = replace(self._requests[order_id], quantity=quantity, limit_price=limit_price)
        product = self._validate(request)
        plan = self._plan(request, product)
        errors = [plan.error] if plan.error else []
        if problem := self._funds_problem(request, product, plan, credit=self._holds.get(order.order_id)):
            errors.append(problem)
        preview_id = f"preview-{uuid.uuid4()}"
        self._edit_previews[preview_id] = (order_id, quantity, limit_price)
        self._dirty = True
        self._persist()
        return self._preview(preview_id, request, product, plan, errors, order_id=order_id)

    def apply_edit(self, order_id: str, preview_id: str) -> Order:
        """Apply a previewed edit (each preview id once, only to its own order); holds follow the new values."""
        self._sync()
        pending = self._edit_previews.get(preview_id)
        if pending is None or pending[0] != order_id:
            raise OrderRejected(
                f"preview_id {preview_id} was not issued for order {order_id} or was already used; "
                "run preview_edit for this order first"
            )
        order = self._editable(order_id)
        _, quantity, limit_price = pending
        request = replace(self._requests[order_id], quantity=quantity, limit_price=limit_price)
        product = self._validate(request)
        plan = self._plan(request, product)
        if plan.error:
            raise OrderRejected(plan.error)
        if problem := self._funds_problem(request, product, plan, credit=self._holds.get(order_id)):
            raise InsufficientFunds(problem)
        del self._edit_previews[preview_id]
        self._release_hold(order_id)
        del self._open[order_id]
        now = self.market.now()
        order.quantity = quantity
        order.limit_price = limit_price
        order.updated_at = now
        self._execute(order, product, plan, now)
        self._dirty = True
        self._persist()
        return copy.copy(order)

    def cancel_orders(self, order_ids: list[str]) -> dict[str, bool]:
        """Cancel resting orders; True per id actually cancelled (unknown or already final: False)."""
        self._sync()
        now = self.market.now()
        result: dict[str, bool] = {}
        for order_id in order_ids:
            if order_id in result:
                continue
            order = self._open.get(order_id)
            result[order_id] = order is not None
            if order is not None:
                self._close(order, OrderStatus.CANCELLED, now)
        self._persist()
        return result

    def get_order(self, order_id: str) -> Order:
        self._sync()
        order = self._orders.get(order_id)
        if order is None:
            raise OrderNotFound(f"order {order_id} not found on the simulated exchange")
        self._persist()
        return copy.copy(order)

    def find_order(self, client_order_id: str) -> Order | None:
        self._sync()
        order_id = self._by_client.get(client_order_id)
        self._persist()
        return copy.copy(self._orders[order_id]) if order_id is not None else None

    def list_open_orders(self, symbol: str | None = None) -> list[Order]:
        self._sync()
        self._persist()
        return [copy.copy(o) for o in self._open.values() if symbol is None or o.symbol == symbol]

    def list_fills(self, since: datetime | None = None) -> list[Fill]:
        """Fills with filled_at after since, oldest first."""
        self._sync()
        self._persist()
        if since is None:
            return list(self._fills)
        return self._fills[bisect_right(self._fills, since, key=_filled_at) :]

    # --- account -----------------------------------------------------------------------------------------------

    def balances(self) -> list[Balance]:
        self._sync()
        self._persist()
        currencies = set(self._totals) | {  # a future's base is no currency: its contracts are positions
            c
            for p in self._products.values()
            for c in ((p.quote_currency,) if p.futures is not None else (p.base_currency, p.quote_currency))
        }
        zero = Decimal(0)
        return [
            Balance(c, self._totals.get(c, zero) - self._held.get(c, zero), self._held.get(c, zero))
            for c in sorted(currencies)
        ]

    def positions(self) -> list[Position]:
        """Non-zero positions: base quantity traded and its average entry price."""
        self._sync()
        self._persist()
        return [Position(s, q, avg) for s, (q, avg) in sorted(self._positions.items()) if q != 0]

    def account_snapshot(self) -> AccountSnapshot:
        return AccountSnapshot(
            balances=self.balances(),
            permissions=KeyPermissions(can_view=True, can_trade=True, can_transfer=False, portfolio_type="PAPER"),
            fee_tier=FeeTier("paper-intro", self.maker_fee_rate, self.taker_fee_rate),
            positions=self.positions(),
            futures=self.futures_account() if self.derivatives else None,
        )

    # --- futures -----------------------------------------------------------------------------------------------

    def futures_account(self) -> FuturesAccount:
        """The paper futures account, shaped like Coinbase's CFM balance summary: the USD balance is the
        collateral (trader/brokers/paper_futures.py)."""
        self._sync()
        self._persist()
        return self._futures_account()

    def _futures_account(self) -> FuturesAccount:
        cash, held = self._totals.get("USD", Decimal(0)), self._held.get("USD", Decimal(0))
        return self._book.account(cash, held, self._futures_held(), self.market.now().date().isoformat())

    def fresh_product(self, symbol: str) -> Product:
        """The product with its funding now (the funding tracker's read)."""
        self._sync()
        return self.get_product(symbol)

    def funding_payments(self, since: datetime | None = None) -> list[FundingPayment]:
        """Funding accrued and settled after `since`, oldest first (payment_id is unique)."""
        self._sync()
        self._persist()
        return self._book.payments_since(since)

    def _futures_held(self) -> list[Held]:
        """The futures positions at their marks, by symbol."""
        return [
            Held(self._products[s], contracts, entry, self._mark(self._products[s]))
            for s, (contracts, entry) in sorted(self._positions.items())
            if self._products[s].futures is not None
        ]

    def _bar_interval(self, symbol: str) -> timedelta:
        """How long a bar lasts: from the current bar's start to the market clock (its close)."""
        return self.market.now() - self.market.latest(symbol).start

    def _mark(self, product: Product) -> Decimal:
        return self.market.latest(product.symbol).close

    def _funding_rate(self, product: Product) -> Decimal:
        """The rate the next funding instant applies: fixed when its interval began (trader/brokers/futures.py)."""
        assert product.futures is not None
        now = self.market.now()
        interval = self._bar_interval(product.symbol)
        start = fx.interval_start(now)
        history = self._histories([product], int((now - start) / interval) + 2)
        return self._rate_fixed_at(product, start, history, interval)

    def _histories(self, products: list[Product], bars: int) -> dict[str, list[Candle]]:
        """The last `bars` bars of each future and its underlying (the index)."""
        wanted = {p.symbol for p in products} | {p.futures.underlying for p in products if p.futures is not None}
        return {s: self.market.history(s, bars) for s in wanted if s in self.market.symbols()}

    @staticmethod
    def _rate_fixed_at(
        product: Product, at: datetime, history: dict[str, list[Candle]], interval: timedelta
    ) -> Decimal:
        """The paper rate from the future's premium over its index at `at` (0 without both prices)."""
        assert product.futures is not None
        mark = _close_at(history.get(product.symbol, []), at, interval)
        index = _close_at(history.get(product.futures.underlying, []), at, interval)
        return fx.paper_funding_rate(mark, index) if mark is not None and index is not None else Decimal(0)

    def _apply_funding(self, bars: int) -> None:
        """Every funding instant the market moved past: each futures position accrues its payment at that bar's
        close; at a settlement instant the accrued funding moves into the USD balance."""
        now = self.market.now()
        since = self._book.funding_through or now
        self._book.funding_through = now
        instants = fx.funding_instants(since, now) if since < now else []
        if not instants:
            return
        held = self._futures_held()
        interval = self._bar_interval(held[0].product.symbol) if held else now - now
        # back to the start of the first instant's interval: its rate was fixed then
        history = (
            self._histories([p.product for p in held], bars + int(fx.FUNDING_INTERVAL / interval) + 2) if held else {}
        )
        for instant in instants:
            for position in held:
                mark = _close_at(history.get(position.product.symbol, []), instant, interval)
                rate = self._rate_fixed_at(position.product, instant - fx.FUNDING_INTERVAL, history, interval)
                if mark is not None:
                    self._book.accrue(instant, replace(position, mark=mark), rate)
            if fx.is_settlement(instant):
                self._totals["USD"] = self._totals.get("USD", Decimal(0)) + self._book.settle(instant)
        self._dirty = True

    def _liquidate_if_due(self) -> None:
        """Close every futures position at the mark when the liquidation buffer is gone (buffer <= 0)."""
        held = self._futures_held()
        if not held:
            return
        account = self._futures_account()
        if account.liquidation_buffer_usd > 0:
            return
        now = self.market.now()
        log.error(
            "paper futures liquidated: equity %s at or below the maintenance margin %s",
            fmt(account.liquidation_threshold + account.liquidation_buffer_usd),
            fmt(account.liquidation_threshold),
        )
        for position in held:
            self._book.liquidations += 1
            side = Side.SELL if position.contracts > 0 else Side.BUY
            request = OrderRequest(
                position.product.symbol,
                side,
                OrderType.MARKET,
                abs(position.contracts),
                f"liquidation-{self._book.liquidations}",
                reduce_only=True,
            )
            self._order_seq += 1
            order = Order(
                order_id=f"sim-order-{self._order_seq}",
                client_order_id=request.client_order_id,
                symbol=request.symbol,
                side=side,
                order_type=OrderType.MARKET,
                quantity=request.quantity,
                status=OrderStatus.OPEN,
                created_at=now,
                reduce_only=True,
                updated_at=now,
            )
            self._orders[order.order_id] = order
            self._requests[order.order_id] = request
            self._by_client[order.client_order_id] = order.order_id
            self._fill(order, position.product, position.mark, Liquidity.TAKER, now)
        self._dirty = True

    # --- validation --------------------------------------------------------------------------------------------

    def _validate(self, request: OrderRequest) -> Product:
        product = self.get_product(request.symbol)
        self._check_futures(request, product)
        check_order(request, product, reference_price=self.market.latest(product.symbol).close, now=self.market.now())
        return product

    def _check_reduce_only(self, request: OrderRequest, product: Product) -> None:
        held = self._positions.get(product.symbol, (Decimal(0), Decimal(0)))[0]
        check_reduce_only(request, product, held)

    def _check_futures(self, request: OrderRequest, product: Product) -> None:
        if product.futures is not None and not self.derivatives:
            raise OrderRejected(
                f"{product.symbol} is a future: futures orders need COINBASE_ENABLE_DERIVATIVES=1 (nothing sent)"
            )

    # --- pricing and execution ---------------------------------------------------------------------------------

    def _bid_ask(self, product: Product) -> tuple[Decimal, Decimal]:
        tick = product.quote_increment
        quote = self.market.quote(product.symbol)
        if quote is not None:  # a live source's best bid/ask
            return _round(quote[0], tick, ROUND_FLOOR), _round(quote[1], tick, ROUND_CEILING)
        close = self.market.latest(product.symbol).close
        return (
            _round(close * (1 - self._half_spread), tick, ROUND_FLOOR),
            _round(close * (1 + self._half_spread), tick, ROUND_CEILING),
        )

    def _slipped(self, product: Product, side: Side, price: Decimal) -> Decimal:
        """A taker's price: price +/- slippage, rounded against the trader to the quote increment."""
        if side == Side.BUY:
            return _round(price * self._buy_slippage, product.quote_increment, ROUND_CEILING)
        return _round(price * self._sell_slippage, product.quote_increment, ROUND_FLOOR)

    def _fee(self, product: Product, notional: Decimal, liquidity: Liquidity) -> Decimal:
        rate = self.maker_fee_rate if liquidity == Liquidity.MAKER else self.taker_fee_rate
        step = FEE_STEP if product.futures is not None else product.quote_increment  # a future's tick is its price's
        return _round(notional * rate, step, ROUND_HALF_UP)

    def _plan(self, request: OrderRequest, product: Product) -> _Plan:
        close = self.market.latest(product.symbol).close
        buy = request.side == Side.BUY
        quote = self.market.quote(product.symbol)
        reference = close if quote is None else (quote[1] if buy else quote[0])
        walked = self.market.taker_price(product.symbol, request.side, request.quantity)
        if walked is not None:  # a live level2 book: its depth is the slippage
            market_price = _round(walked, product.quote_increment, ROUND_CEILING if buy else ROUND_FLOOR)
        else:
            market_price = self._slipped(product, request.side, reference)
        if request.order_type == OrderType.MARKET:
            return _Plan("fill", market_price, Liquidity.TAKER)
        limit = request.limit_price
        assert limit is not None  # _validate guarantees it
        if request.order_type == OrderType.STOP_LIMIT:
            stop = request.stop_price
            assert stop is not None
            if not (close >= stop if buy else close <= stop):
                return _Plan("rest", limit, Liquidity.TAKER, triggered=False)
        bid, ask = self._bid_ask(product)
        if buy and limit >= ask or not buy and limit <= bid:
            if request.post_only:
                touch = f"best ask {fmt(ask)}" if buy else f"best bid {fmt(bid)}"
                return _Plan(
                    "rest",
                    limit,
                    Liquidity.MAKER,
                    error=f"post_only limit {request.side} at {fmt(limit)} would cross the {touch} on {product.symbol}",
                )
            return _Plan("fill", min(limit, market_price) if buy else max(limit, market_price), Liquidity.TAKER)
        if request.time_in_force == TimeInForce.IOC:
            return _Plan("cancel", limit, Liquidity.TAKER)
        return _Plan("rest", limit, Liquidity.MAKER)

    def _required(self, request: OrderRequest, product: Product, plan: _Plan) -> tuple[str, Decimal, str]:
        """(currency, amount, how it is made up) the plan needs available now."""
        if plan.action == "cancel":
            return product.quote_currency, Decimal(0), "nothing"
        if product.futures is not None:
            return self._margin_required(request, product, plan)
        if request.side == Side.SELL:
            return product.base_currency, request.quantity, f"{fmt(request.quantity)} {product.base_currency}"
        notional = request.quantity * plan.price
        fee = self._fee(product, notional, plan.liquidity)
        return (
            product.quote_currency,
            notional + fee,
            f"{fmt(request.quantity)} x {fmt(plan.price)} + fee {fmt(fee)}",
        )

    def _margin_required(self, request: OrderRequest, product: Product, plan: _Plan) -> tuple[str, Decimal, str]:
        """A future's order needs the initial margin of the contracts it opens (none for those it closes: an
        underwater position can always be closed) plus its fee, from the margin not already used."""
        assert product.futures is not None
        held = self._positions.get(product.symbol, (Decimal(0), Decimal(0)))[0]
        signed = request.quantity if request.side == Side.BUY else -request.quantity
        opening, margin, breakdown = FuturesBook.opening_margin(
            product.futures, held, signed, plan.price, request.leverage
        )
        if not opening:
            return product.quote_currency, Decimal(0), breakdown
        fee = self._fee(product, product.notional(request.quantity, plan.price), plan.liquidity)
        used = self._book.margin_in_use(self._futures_held())
        return product.quote_currency, margin + fee + used, f"{breakdown} + fee {fmt(fee)} + margin in use {fmt(used)}"

    def _funds_problem(
        self, request: OrderRequest, product: Product, plan: _Plan, credit: tuple[str, Decimal] | None = None
    ) -> str | None:
        """Why available funds do not cover the plan (an edit is credited with the order's current hold)."""
        currency, amount, breakdown = self._required(request, product, plan)
        available = self._totals.get(currency, Decimal(0)) - self._held.get(currency, Decimal(0))
        if credit is not None and credit[0] == currency:
            available += credit[1]
        if amount <= available:
            return None
        return (
            f"insufficient {currency} for {request.side} {fmt(request.quantity)} {product.symbol}: needs "
            f"{fmt(amount)} {currency} ({breakdown}), available {fmt(available)} {currency}"
        )

    def _preview(
        self,
        preview_id: str,
        request: OrderRequest,
        product: Product,
        plan: _Plan,
        errors: list[str],
        order_id: str | None = None,
    ) -> OrderPreview:
        notional = product.notional(request.quantity, plan.price)
        return OrderPreview(
            preview_id=preview_id,
            request=request,
            estimated_price=plan.price,
            quote_size=notional,
            base_size=request.quantity,
            commission=self._fee(product, notional, plan.liquidity),
            errors=tuple(errors),
            order_id=order_id,
        )

    def _execute(self, order: Order, product: Product, plan: _Plan, now: datetime) -> None:
        """Carry out a plan for an order already recorded: fill, cancel (IOC), or rest with a hold."""
        if plan.action == "fill":
            self._fill(order, product, plan.price, Liquidity.TAKER, now)
        elif plan.action == "cancel":
            order.status = OrderStatus.CANCELLED
            order.updated_at = now
        else:
            currency, amount = self._hold_for(order, product, plan)
            self._hold(order.order_id, currency, amount)
            self._open[order.order_id] = order
            if plan.triggered:
                self._triggered.add(order.order_id)

    def _hold_for(self, order: Order, product: Product, plan: _Plan) -> tuple[str, Decimal]:
        """What a resting order holds: the base it sells, or its limit value plus the fee it may pay (a future: the
        margin it would open, and its fee)."""
        if product.futures is not None:  # (one that only closes contracts holds nothing)
            request = self._requests[order.order_id]
            currency, amount, _ = self._margin_required(request, product, plan)
            return currency, amount - self._book.margin_in_use(self._futures_held()) if amount else Decimal(0)
        if order.side == Side.SELL:
            return product.base_currency, order.quantity
        assert order.limit_price is not None
        notional = order.quantity * order.limit_price
        return product.quote_currency, notional + self._fee(product, notional, plan.liquidity)

    def _release_hold(self, order_id: str) -> None:
        hold = self._holds.pop(order_id, None)
        if hold is not None:
            self._held[hold[0]] -= hold[1]

    def _close(self, order: Order, status: OrderStatus, at: datetime) -> None:
        """Take a resting order off the book: release its hold and forget its edit previews."""
        self._open.pop(order.order_id, None)
        self._release_hold(order.order_id)
        self._triggered.discard(order.order_id)
        for preview_id in [p for p, pending in self._edit_previews.items() if pending[0] == order.order_id]:
            del self._edit_previews[preview_id]
        order.status = status
        order.updated_at = at
        self._dirty = True

    def _fill(self, order: Order, product: Product, price: Decimal, liquidity: Liquidity, at: datetime) -> None:
        quantity = order.quantity
        notional = product.notional(quantity, price)
        fee = self._fee(product, notional, liquidity)
        base, quote = product.base_currency, product.quote_currency
        self._close(order, OrderStatus.FILLED, at)
        zero = Decimal(0)
        if product.futures is not None:  # margin trading: no base changes hands; PnL is realized as contracts close
            signed = quantity if order.side == Side.BUY else -quantity
            held = self._positions.get(order.symbol, (zero, zero))
            leverage = self._requests[order.order_id].leverage
            day = at.date().isoformat()
            realized = self._book.on_fill(order.symbol, product.futures, held, signed, price, leverage, day)
            self._totals[quote] = self._totals.get(quote, zero) + realized - fee
        elif order.side == Side.BUY:
            self._totals[base] = self._totals.get(base, zero) + quantity
            self._totals[quote] = self._totals.get(quote, zero) - notional - fee
        else:
            self._totals[base] = self._totals.get(base, zero) - quantity
            self._totals[quote] = self._totals.get(quote, zero) + notional - fee
        self._update_position(order.symbol, quantity if order.side == Side.BUY else -quantity, price)
        order.filled_quantity = quantity
        order.average_fill_price = price
        order.fees = fee
        self._trade_seq += 1
        fill = Fill(
            trade_id=f"sim-{self._trade_seq}",
            order_id=order.order_id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            quantity=quantity,
            price=price,
            fee=fee,
            liquidity=liquidity,
            filled_at=at,
            contract_size=product.futures.contract_size if product.futures is not None else Decimal(1),
        )
        if self._fills and self._fills[-1].filled_at > at:  # only if the market was seeked backwards
            self._fills.insert(bisect_right(self._fills, at, key=_filled_at), fill)
        else:
            self._fills.append(fill)

    def _update_position(self, symbol: str, signed_quantity: Decimal, price: Decimal) -> None:
        """Average cost: adding to a position re-averages, reducing keeps the entry, flipping starts at price."""
        held, average = self._positions.get(symbol, (Decimal(0), Decimal(0)))
        new = held + signed_quantity
        if new == 0:
            self._positions.pop(symbol, None)
            return
        if held == 0 or (held > 0) != (new > 0):
            average = price
        elif (held > 0) == (signed_quantity > 0):
            cost = abs(held) * average + abs(signed_quantity) * price
            average = (cost / abs(new)).quantize(AVERAGE_PRICE_STEP, rounding=ROUND_HALF_UP)
        self._positions[symbol] = (new, average)

    def _editable(self, order_id: str) -> Order:
        order = self._orders.get(order_id)
        if order is None:
            raise OrderNotFound(f"order {order_id} not found on the simulated exchange")
        if order.order_id not in self._open:
            raise OrderRejected(f"order {order_id} is {order.status}; only open limit orders can be edited")
        if order.order_type != OrderType.LIMIT:
            raise OrderRejected(f"order {order_id} is a {order.order_type} order; only open limit orders can be edited")
        return order

    # --- matching as the market moves ------------------------------------------------------------------------

    def _sync(self) -> None:
        """Match resting orders against every bar the market moved past since the last call."""
        cursor = self.market.cursor
        if cursor == self._matched_cursor:
            return
        moved = cursor - self._matched_cursor
        if moved > 0 and self._open:
            self._match_bars(moved)
        self._matched_cursor = cursor
        self._clock_dirty = True
        if self.derivatives:
            self._apply_funding(max(moved, 1))
            self._liquidate_if_due()

    def _match_bars(self, count: int) -> None:
        symbols = {o.symbol for o in self._open.values()}
        bars = {s: self.market.history(s, count) for s in symbols}
        any_symbol = next(iter(symbols))
        interval = self._bar_interval(any_symbol)
        for step in range(count):
            for order in list(self._open.values()):
                rows = bars[order.symbol]
                index = step - (count - len(rows))
                if index < 0:
                    continue
                candle = rows[index]
                closed_at = candle.start + interval
                self._match(order, candle, closed_at)
                if order.order_id in self._open and order.expire_at is not None and closed_at >= order.expire_at:
                    self._close(order, OrderStatus.EXPIRED, closed_at)

    def _match(self, order: Order, candle: Candle, at: datetime) -> None:
        product = self._products[order.symbol]
        buy = order.side == Side.BUY
        limit = order.limit_price
        assert limit is not None
        if order.order_id not in self._triggered:
            stop = order.stop_price
            assert stop is not None
            if not (candle.high >= stop if buy else candle.low <= stop):
                return
            self._triggered.add(order.order_id)
            self._dirty = True
            if buy and limit >= stop or not buy and limit <= stop:
                taker = self._slipped(product, order.side, stop)
                self._fill(order, product, min(limit, taker) if buy else max(limit, taker), Liquidity.TAKER, at)
            return
        if candle.low <= limit if buy else candle.high >= limit:
            self._fill(order, product, limit, Liquidity.MAKER, at)


def _filled_at(fill: Fill) -> datetime:
    return fill.filled_at


def _close_at(bars: list[Candle], instant: datetime, interval: timedelta) -> Decimal | None:
    """The close of the bar that closed at `instant` (or the last one before it), None without one."""
    closes = [bar.close for bar in bars if bar.start + interval <= instant]
    return closes[-1] if closes else None
