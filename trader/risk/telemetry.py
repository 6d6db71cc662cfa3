"""What the guards measure about the broker: error rate, API latency p95, order success rate, over a window.

MeteredBroker times every call the bot makes to the exchange; OperationStats keeps the last
RISK_GUARD_WINDOW_SECONDS of outcomes. A rate needs RISK_GUARD_MIN_SAMPLES before it is reported
(one rejected order out of two is not a 50% success rate worth halting for).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trader.brokers.base import Broker
from trader.errors import BrokerError, BrokerUnavailable

# Calls that talk to the exchange (the simulated exchange answers them in memory, Coinbase over HTTPS).
METERED_METHODS = frozenset(
    {
        "get_product",
        "list_products",
        "best_bid_ask",
        "candles",
        "preview_order",
        "place_order",
        "preview_edit",
        "apply_edit",
        "cancel_orders",
        "get_order",
        "find_order",
        "list_orders",
        "list_fills",
        "balances",
        "positions",
        "account_snapshot",
    }
)

ApiListener = Callable[[str, float, bool], None]


@dataclass(frozen=True)
class _Sample:
    at: float
    ok: bool
    latency_ms: float


class OperationStats:
    """Rolling outcomes of exchange calls and order submissions."""

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
        self._calls: deque[_Sample] = deque()
        self._orders: deque[tuple[float, bool]] = deque()
        self.listeners: list[ApiListener] = []

    def record_call(self, method: str, latency_ms: float, ok: bool) -> None:
        """One exchange call; ok=False for an error (unreachable, 5xx, auth), not for a business refusal."""
        self._calls.append(_Sample(self.clock(), ok, latency_ms))
        for listener in self.listeners:
            listener(method, latency_ms / 1000, ok)

    def record_order(self, accepted: bool) -> None:
        """One order submission: accepted by the exchange, or rejected/failed."""
        self._orders.append((self.clock(), accepted))

    def _prune(self) -> None:
        horizon = self.clock() - self.window_seconds
        while self._calls and self._calls[0].at < horizon:
            self._calls.popleft()
        while self._orders and self._orders[0][0] < horizon:
            self._orders.popleft()

    def error_rate_pct(self) -> float | None:
        """Failed calls in percent over the window; None until there are min_samples calls."""
        self._prune()
        if len(self._calls) < self.min_samples:
            return None
        return 100.0 * sum(not s.ok for s in self._calls) / len(self._calls)

    def latency_p95_ms(self) -> float | None:
        """95th percentile call latency over the window (nearest rank); None until min_samples calls."""
        self._prune()
        if len(self._calls) < self.min_samples:
            return None
        ordered = sorted(s.latency_ms for s in self._calls)
        return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]

    def order_success_pct(self) -> float | None:
        """Accepted orders in percent over the window; None until min_samples orders."""
        self._prune()
        if len(self._orders) < self.min_samples:
            return None
        return 100.0 * sum(ok for _, ok in self._orders) / len(self._orders)


class MeteredBroker:
    """A Broker that times its exchange calls into OperationStats; everything else passes through."""

    def __init__(self, broker: Broker, stats: OperationStats) -> None:
        object.__setattr__(self, "_broker", broker)
        object.__setattr__(self, "_stats", stats)

    @property
    def inner(self) -> Broker:
        return self._broker

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._broker, name)
        if name not in METERED_METHODS or not callable(attribute):
            return attribute
        stats = self._stats

        def metered(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            ok = True
            try:
                return attribute(*args, **kwargs)
            except (BrokerUnavailable, BrokerError):
                ok = False
                raise
            finally:
                stats.record_call(name, (time.perf_counter() - started) * 1000, ok)

        return metered

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._broker, name, value)
