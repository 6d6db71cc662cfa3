"""Baseline strategy: moving-average crossover on closes, sized in quote currency from settings."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from trader.domain import Candle, Product, Side, quantize_down
from trader.strategy.base import OrderIntent, Strategy


def _mean(values: Sequence[Decimal]) -> Decimal:
    return sum(values, Decimal(0)) / len(values)


class MovingAverageCrossover(Strategy):
    """Buy position_size_usd when the fast average crosses above the slow one; exit all when it crosses below."""

    name = "ma_crossover"

    def __init__(self, fast_window: int, slow_window: int, position_size_usd: Decimal) -> None:
        if not 1 <= fast_window < slow_window:
            raise ValueError(f"fast_window {fast_window} must be >= 1 and below slow_window {slow_window}")
        self.fast_window = fast_window
        self.slow_window = slow_window
        self.position_size_usd = position_size_usd

    @property
    def warmup(self) -> int:
        return self.slow_window + 1

    def spread(self, closes: Sequence[Decimal]) -> Decimal:
        """Fast minus slow average over the last slow_window closes."""
        return _mean(closes[-self.fast_window :]) - _mean(closes[-self.slow_window :])

    def decide(self, product: Product, candles: Sequence[Candle], position: Decimal) -> list[OrderIntent]:
        if len(candles) < self.warmup:
            return []
        closes = [c.close for c in candles[-self.warmup :]]
        before, now = self.spread(closes[:-1]), self.spread(closes)
        if before <= 0 < now and position <= 0:
            # a future's unit is one contract: position_size_usd buys that much notional
            quantity = quantize_down(
                self.position_size_usd / product.notional(Decimal(1), closes[-1]), product.base_increment
            )
            if quantity < product.base_min_size:
                return []
            return [OrderIntent(product.symbol, Side.BUY, quantity, f"golden cross: fast-slow {now:.2f}")]
        if before >= 0 > now and position > 0:
            quantity = quantize_down(position, product.base_increment)
            return [
                OrderIntent(product.symbol, Side.SELL, quantity, f"death cross: fast-slow {now:.2f}", reduce_only=True)
            ]
        return []
