"""What the guards measure about the broker: error rate, API latency p95, order success rate, over a window.

MeteredBroker is a Broker that times every exchange call the bot makes; OperationStats keeps the last
RISK_GUARD_WINDOW_SECONDS of outcomes. A rate needs RISK_GUARD_MIN_SAMPLES before it is reported
(one rejected order out of two is not a 50% success rate worth halting for).

Invariant: a reading costs the same on the bot's first cycle and its millionth. The window is kept
incrementally: a sample is counted (and its latency inserted in sorted order) when it arrives and uncounted
when it expires, so no reading sorts or sums the window.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from trader.brokers.base import Broker
from trader.domain import (
    AccountSnapshot,
    Balance,
    Candle,
    Fill,
    Order,
    OrderPreview,
    OrderRequest,
    Position,
    Product,
)
from trader.errors import BrokerError, BrokerUnavailable

ApiListener = Callable[[str, float, bool], None]
_T = TypeVar("_T")


class SortedWindow:
    """A multiset of floats in sorted order: add, remove and rank lookup without sorting the whole set.

    Values live in sorted blocks of at most 2 x BLOCK (the layout of sortedcontainers' SortedList): add and
    remove are a bisect over the blocks' maxima plus a bisect and memmove inside one block, O(log n + BLOCK);
    a rank near the top (the p95) walks blocks from the end.
    """

    BLOCK = 256

    def __init__(self) -> None:
        self._blocks: list[list[float]] = []
        self._maxes: list[float] = []  # the last value of each block
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[float]:
        for block in self._blocks:
            yield from block

    def add(self, value: float) -> None:
        self._len += 1
        if not self._blocks:
            self._blocks.append([value])
            self._maxes.append(value)
            return
        i = bisect_right(self._maxes, value)
        if i == len(self._blocks):  # above every value: goes last in the last block
            i -= 1
            self._blocks[i].append(value)
            self._maxes[i] = value
        else:
            insort(self._blocks[i], value)
        block = self._blocks[i]
        if len(block) > 2 * self.BLOCK:
            self._blocks[i : i + 1] = [block[: self.BLOCK], block[self.BLOCK :]]
            self._maxes[i : i + 1] = [block[self.BLOCK - 1], block[-1]]

    def remove(self, value: float) -> None:
        """Remove one occurrence of value; ValueError when there is none."""
        i = bisect_left(self._maxes, value)  # the first block whose maximum is >= value holds it, if any does
        block = self._blocks[i] if i < len(self._blocks) else []
        j = bisect_left(block, value)
        if j == len(block) or block[j] != value:
            raise ValueError(f"{value} is not in the window")
        del block[j]
        self._len -= 1
        if not block:
            del self._blocks[i]
            del self._maxes[i]
        else:
            self._maxes[i] = block[-1]

    def __getitem__(self, rank: int) -> float:
        """The value at this 0-based rank in ascending order."""
        if not 0 <= rank < self._len:
            raise IndexError(rank)
        above = self._len - 1 - rank  # how many values are larger: few for a high percentile
        for block in reversed(self._blocks):
            if above < len(block):
                return block[len(block) - 1 - above]
            above -= len(block)
        raise AssertionError("unreachable: the block lengths add up to len()")


class OperationStats:
    """Rolling outcomes of exchange calls and order submissions over the last window_seconds."""

    def __init__(
        self,
        window_seconds: float = 300.0,
        min_samples: int = 20,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self.min_samples = min_samples
        self.clock = clock
        self._calls: deque[tuple[float, bool, float]] = deque()  # (at, ok, latency_ms), oldest first
        self._call_errors = 0
        self._latencies = SortedWindow()  # the latencies of _calls
        self._orders: deque[tuple[float, bool]] = deque()  # (at, accepted), oldest first
        self._orders_accepted = 0
        self.listeners: list[ApiListener] = []

    @property
    def calls(self) -> int:
        """Exchange calls in the window."""
        self._prune()
        return len(self._calls)

    def record_call(self, method: str, latency_ms: float, ok: bool) -> None:
        """One exchange call; ok=False for an error (unreachable, 5xx, auth), not for a business refusal."""
        self._calls.append((self.clock(), ok, latency_ms))
        self._call_errors += not ok
        self._latencies.add(latency_ms)
        for listener in self.listeners:
            listener(method, latency_ms / 1000, ok)

    def record_order(self, accepted: bool) -> None:
        """One order submission: accepted by the exchange, or rejected/failed."""
        self._orders.append((self.clock(), accepted))
        self._orders_accepted += accepted

    def _prune(self) -> None:
        horizon = self.clock() - self.window_seconds
        calls, orders = self._calls, self._orders
        while calls and calls[0][0] < horizon:
            _, ok, latency_ms = calls.popleft()
            self._call_errors -= not ok
            self._latencies.remove(latency_ms)
        while orders and orders[0][0] < horizon:
            self._orders_accepted -= orders.popleft()[1]

    def error_rate_pct(self) -> float | None:
        """Failed calls in percent over the window; None until there are min_samples calls."""
        self._prune()
        if len(self._calls) < self.min_samples:
            return None
        return 100.0 * self._call_errors / len(self._calls)

    def latency_p95_ms(self) -> float | None:
        """95th percentile call latency over the window (nearest rank); None until min_samples calls."""
        self._prune()
        count = len(self._calls)
        if count < self.min_samples:
            return None
        return self._latencies[max(0, -(-95 * count // 100) - 1)]

    def order_success_pct(self) -> float | None:
        """Accepted orders in percent over the window; None until min_samples orders."""
        self._prune()
        if len(self._orders) < self.min_samples:
            return None
        return 100.0 * self._orders_accepted / len(self._orders)


# The Broker methods that are not exchange calls: MeteredBroker passes them through untimed.
UNMETERED_METHODS = frozenset({"now", "validate", "restart_market_data", "advance"})


class MeteredBroker(Broker):
    """A Broker over another that times every exchange call into OperationStats.

    Every Broker method is implemented here (tests/trader/risk/test_telemetry.py fails for one that is not):
    an exchange call goes through _timed; the calls answered without the exchange (the clock, local rule
    checks, stepping a replay, restarting the feed) pass straight through and are not samples.
    """

    def __init__(self, broker: Broker, stats: OperationStats) -> None:
        self.inner = broker
        self.stats = stats
        self.name = broker.name

    def _timed(self, method: str, call: Callable[[], _T]) -> _T:
        started = time.perf_counter()
        ok = True
        try:
            return call()
        except (BrokerUnavailable, BrokerError):
            ok = False
            raise
        finally:
            self.stats.record_call(method, (time.perf_counter() - started) * 1000, ok)

    # --- exchange calls: timed -----------------------------------------------------------------------------------

    def get_product(self, symbol: str) -> Product:
        return self._timed("get_product", lambda: self.inner.get_product(symbol))

    def fresh_product(self, symbol: str) -> Product:
        return self._timed("fresh_product", lambda: self.inner.fresh_product(symbol))

    def list_products(self) -> list[Product]:
        return self._timed("list_products", self.inner.list_products)

    def best_bid_ask(self, symbol: str) -> tuple[Decimal, Decimal]:
        return self._timed("best_bid_ask", lambda: self.inner.best_bid_ask(symbol))

    def candles(self, symbol: str, limit: int) -> list[Candle]:
        return self._timed("candles", lambda: self.inner.candles(symbol, limit))

    def preview_order(self, request: OrderRequest) -> OrderPreview:
        return self._timed("preview_order", lambda: self.inner.preview_order(request))

    def place_order(self, request: OrderRequest) -> Order:
        return self._timed("place_order", lambda: self.inner.place_order(request))

    def preview_edit(self, order_id: str, quantity: Decimal, limit_price: Decimal) -> OrderPreview:
        return self._timed("preview_edit", lambda: self.inner.preview_edit(order_id, quantity, limit_price))

    def apply_edit(self, order_id: str, preview_id: str) -> Order:
        return self._timed("apply_edit", lambda: self.inner.apply_edit(order_id, preview_id))

    def cancel_orders(self, order_ids: list[str]) -> dict[str, bool]:
        return self._timed("cancel_orders", lambda: self.inner.cancel_orders(order_ids))

    def get_order(self, order_id: str) -> Order:
        return self._timed("get_order", lambda: self.inner.get_order(order_id))

    def find_order(self, client_order_id: str) -> Order | None:
        return self._timed("find_order", lambda: self.inner.find_order(client_order_id))

    def list_open_orders(self, symbol: str | None = None) -> list[Order]:
        return self._timed("list_open_orders", lambda: self.inner.list_open_orders(symbol))

    def list_fills(self, since: datetime | None = None) -> list[Fill]:
        return self._timed("list_fills", lambda: self.inner.list_fills(since))

    def balances(self) -> list[Balance]:
        return self._timed("balances", self.inner.balances)

    def positions(self) -> list[Position]:
        return self._timed("positions", self.inner.positions)

    def account_snapshot(self) -> AccountSnapshot:
        return self._timed("account_snapshot", self.inner.account_snapshot)

    # --- answered without the exchange: not samples ------------------------------------------------------------

    def now(self) -> datetime:
        return self.inner.now()

    def validate(self, request: OrderRequest) -> None:
        self.inner.validate(request)

    def restart_market_data(self) -> None:
        self.inner.restart_market_data()

    def advance(self) -> bool:
        return self.inner.advance()
