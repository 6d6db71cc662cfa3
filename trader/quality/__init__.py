"""Data quality gates: Great Expectations suites on market data and reconciliation inputs (gx imported lazily)."""

from trader.quality.market_data import GateResult, MarketDataGate

__all__ = ["GateResult", "MarketDataGate"]
