"""Paper trading on live data: Coinbase's public candles and best bid/ask (no key), fetched by the real SDK
client over HTTPS from the local Advanced Trade server, feeding the simulated exchange."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

import pytest

from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderStatus, OrderType, Side
from trader.errors import ConfigError, UnknownSymbol
from trader.market import MarketDataSource
from trader.market.coinbase_live import CoinbaseLiveMarketData
from trader.settings import load_settings
from trader.testing.advanced_trade import AdvancedTradeServer


@pytest.fixture
def live(exchange: AdvancedTradeServer) -> CoinbaseLiveMarketData:
    settings = load_settings(
        coinbase_api_base=exchange.base_url,
        coinbase_ca_file=exchange.ca_file,
        trading_symbols="BTC-USD,ETH-USD",
        market_data="coinbase",
    )
    return CoinbaseLiveMarketData.from_settings(settings)


def test_live_data_is_a_market_data_source_of_closed_bars(
    live: CoinbaseLiveMarketData, exchange: AdvancedTradeServer
) -> None:
    history = live.history("BTC-USD", 50)

    assert isinstance(live, MarketDataSource)
    assert len(history) == 50 and history[-1] == live.latest("BTC-USD")
    assert [c.start for c in history] == sorted(c.start for c in history)
    assert live.now() == history[-1].start + (history[-1].start - history[-2].start)
    assert live.cursor == int(history[-1].start.timestamp() // 60)
    # only public endpoints, no JWT needed
    assert {r.path.split("/")[4] for r in exchange.requests} == {"market"}
    with pytest.raises(UnknownSymbol):
        live.latest("SOL-USD")


def test_paper_fills_use_the_live_best_ask_and_bid(live: CoinbaseLiveMarketData, exchange: AdvancedTradeServer) -> None:
    exchange.set_price("BTC-USD", Decimal("61234.50"), Decimal("61240.25"))
    live.advance()
    paper = SimulatedExchange(live)

    assert paper.best_bid_ask("BTC-USD") == (Decimal("61234.50"), Decimal("61240.25"))
    buy = paper.place_order(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), "live-1"))
    sell = paper.place_order(OrderRequest("BTC-USD", Side.SELL, OrderType.MARKET, Decimal("0.01"), "live-2"))

    slip = Decimal("5") / Decimal("10000")
    tick = Decimal("0.01")
    expected_buy = (Decimal("61240.25") * (1 + slip) / tick).to_integral_value(ROUND_CEILING) * tick
    assert buy.status == OrderStatus.FILLED and buy.average_fill_price == expected_buy
    assert sell.average_fill_price is not None and sell.average_fill_price < Decimal("61234.50")
    assert exchange.orders == {}  # paper: nothing reaches the exchange


def test_a_saved_paper_account_resumes_at_the_present_but_refuses_a_future_cursor(live: CoinbaseLiveMarketData) -> None:
    now = live.cursor

    live.seek(now - 500)  # an older saved account: fine, the market stays at the present
    assert live.cursor == now
    with pytest.raises(ConfigError, match="in the future of live data"):
        live.seek(now + 10)
