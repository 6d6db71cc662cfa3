"""MARKET_DATA=coinbase-ws: bars from the public REST candles, the touch from the WebSocket ticker, both from the
local Advanced Trade servers (HTTPS and WebSocket, one exchange: a price move on it is a ticker update); REST
polling of the product book carries on while the socket is down and stops again when it is back."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.deployments.test_cli import perps_bot
from trader.brokers.simulated import SimulatedExchange
from trader.market.coinbase_ws import CoinbaseWsMarketData
from trader.runtime import build_market_data
from trader.settings import load_settings
from trader.testing.advanced_trade import AdvancedTradeServer, generate_cdp_key
from trader.testing.advanced_trade.ws import WsTestServer

KEY = generate_cdp_key("organizations/test/apiKeys/ws-market-data")
BID, ASK = Decimal("61234.50"), Decimal("61240.25")


def ws_server(exchange: AdvancedTradeServer, port: int = 0) -> WsTestServer:
    server = WsTestServer(key_name=KEY.name, public_key_pem=KEY.public_key_pem, quotes=exchange.quote, port=port)
    exchange.on_price(server.ticker)
    return server.start()


@pytest.fixture
def ws(exchange: AdvancedTradeServer) -> Iterator[WsTestServer]:
    server = ws_server(exchange)
    yield server
    server.stop()


@pytest.fixture
def market(exchange: AdvancedTradeServer, ws: WsTestServer) -> Iterator[CoinbaseWsMarketData]:
    settings = load_settings(
        coinbase_api_base=exchange.base_url,
        coinbase_ca_file=exchange.ca_file,
        trading_symbols="BTC-USD,ETH-USD",
        market_data="coinbase-ws",
        coinbase_ws_url=ws.url,
    )
    source = build_market_data(settings)
    assert isinstance(source, CoinbaseWsMarketData)
    source.quote_max_age = 1.0
    source.feed.backoff_max = 0.3
    yield source
    source.close()


def book_reads(exchange: AdvancedTradeServer) -> int:
    return sum(1 for r in exchange.requests if r.path.endswith("/product_book"))


def until(condition: Callable[[], bool], market: CoinbaseWsMarketData, timeout: float = 10) -> bool:
    return market.feed.wait_for(lambda _: condition(), timeout)


def test_the_touch_follows_the_ticker_and_no_book_is_polled_while_it_is_live(
    exchange: AdvancedTradeServer, ws: WsTestServer, market: CoinbaseWsMarketData
) -> None:
    assert until(lambda: market.feed.stats.messages["ticker"] >= 1, market)  # the subscribe's snapshot
    assert market.quote("ETH-USD") == exchange.quote("ETH-USD")

    exchange.set_price("BTC-USD", BID, ASK)
    assert until(lambda: market.quote("BTC-USD") == (BID, ASK), market)
    polled = book_reads(exchange)
    for _ in range(3):
        market.advance()

    assert book_reads(exchange) == polled  # REST candles only
    assert SimulatedExchange(market).best_bid_ask("BTC-USD") == (BID, ASK)  # paper fills at the ticker's touch
    assert {(s.channel, s.product_ids) for s in ws.subscribes} == {
        ("heartbeats", ()),
        ("ticker", ("BTC-USD", "ETH-USD")),
    }


def test_rest_polling_carries_on_while_the_socket_is_down_and_the_ticker_takes_over_again(
    exchange: AdvancedTradeServer, ws: WsTestServer, market: CoinbaseWsMarketData
) -> None:
    assert until(lambda: market.feed.stats.messages["ticker"] >= 1, market)
    port = int(ws.url.rsplit(":", 1)[1])
    ws.stop()  # the WebSocket server is gone; the HTTPS server is not
    assert until(lambda: not market.feed.stats.connected, market)
    exchange.set_price("BTC-USD", BID, ASK)  # no socket to tell it: only REST knows
    polled = book_reads(exchange)
    market.advance()

    assert book_reads(exchange) == polled + 2  # both symbols' books, over REST
    assert market.quote("BTC-USD") == (BID, ASK)

    back = ws_server(exchange, port)
    try:
        assert until(lambda: market.feed.stats.connected and market.feed.stats.reconnects >= 1, market, 15)
        exchange.set_price("BTC-USD", BID + 1, ASK + 1)
        assert until(lambda: market.quote("BTC-USD") == (BID + 1, ASK + 1), market)
        polled = book_reads(exchange)
        market.advance()
        assert book_reads(exchange) == polled
    finally:
        back.stop()


def test_a_canary_paper_bot_runs_a_cycle_on_the_websocket_ticker(
    exchange: AdvancedTradeServer, ws: WsTestServer, tmp_path: Path
) -> None:
    env = {
        "COINBASE_API_BASE": exchange.base_url,
        "COINBASE_CA_FILE": str(exchange.ca_file),
        "MARKET_DATA": "coinbase-ws",
        "COINBASE_WS_URL": ws.url,
        "STRATEGY_FAST_WINDOW": "2",
        "STRATEGY_SLOW_WINDOW": "3",
    }

    metrics_file = tmp_path / "metrics.prom"
    result = perps_bot(tmp_path, "--profile", "canary", "--dev-fast", "--metrics-file", str(metrics_file), **env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 cycle(s)" in result.stdout
    exported = metrics_file.read_text()
    assert 'perps_bot_ws_connected{account="default",channel="ticker"}' in exported  # the bot exports its feed
    assert "websocket" in json.loads((tmp_path / "metrics.prom.health.json").read_text())
    assert ("ticker", ("BTC-USD",)) in {(s.channel, s.product_ids) for s in ws.subscribes}
