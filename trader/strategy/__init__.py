"""Strategies turn candles and the current position into order intents."""

from trader.strategy.base import OrderIntent, Strategy
from trader.strategy.ma_crossover import MovingAverageCrossover

__all__ = ["MovingAverageCrossover", "OrderIntent", "Strategy"]
