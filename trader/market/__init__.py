"""Market data: the MarketDataSource protocol, the candle replay, and Coinbase's candle shape."""

from trader.market.source import (
    DEFAULT_REPLAY_FILE,
    WARMUP_BARS,
    MarketDataSource,
    ReplayMarketData,
    candles_from_coinbase,
    load_candles_csv,
    write_candles_csv,
)

__all__ = [
    "DEFAULT_REPLAY_FILE",
    "WARMUP_BARS",
    "MarketDataSource",
    "ReplayMarketData",
    "candles_from_coinbase",
    "load_candles_csv",
    "write_candles_csv",
]
