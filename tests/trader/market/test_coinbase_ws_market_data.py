"""MARKET_DATA=coinbase-ws: bars from the public REST candles, the touch from the WebSocket ticker, both from the
local Advanced Trade servers (HTTPS and WebSocket, one exchange: a price move on it is a ticker update); REST
polling of the product book carries on while the socket is down and stops again when it is back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.deployments.test_cli import perps_bot
from tests.trader.test_bot_guards import coinbase_settings
from trader.brokers.coinbase import CoinbaseBroker
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderType, Side
from trader.ledger import Ledger
from trader.market.coinbase_ws import CoinbaseWsMarketData
from trader.runtime import build_bot, build_market_data
from trader.settings import load_settings
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey, generate_cdp_key
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
    skew = market.feed.stats.clock_skew_seconds  # measured against the HTTPS server's GET /time at connect
    assert skew is not None and abs(skew) < 1
    assert SimulatedExchange(market).best_bid_ask("BTC-USD") == (BID, ASK)  # paper fills at the ticker's touch
    assert {(s.channel, s.product_ids) for s in ws.subscribes} == {
        ("heartbeats", ()),
        ("ticker", ("BTC-USD", "ETH-USD")),
        ("level2", ("BTC-USD", "ETH-USD")),
    }


def test_paper_market_orders_walk_the_level2_book_and_a_gap_waits_for_fresh_snapshots(
    exchange: AdvancedTradeServer, ws: WsTestServer, market: CoinbaseWsMarketData
) -> None:
    bids = {Decimal("61234.50"): Decimal("0.02"), Decimal("61230"): Decimal("0.5")}
    offers = {Decimal("61240.25"): Decimal("0.01"), Decimal("61241"): Decimal("0.05"), Decimal("61250"): Decimal("1")}
    assert until(lambda: market.feed.stats.messages["l2_data"] >= 2, market)  # one snapshot per product
    assert market.taker_price("BTC-USD", Side.BUY, Decimal("0.01")) is None  # an empty book: no depth
    ws.set_book("BTC-USD", bids, offers)
    assert until(lambda: market.taker_price("BTC-USD", Side.BUY, Decimal("0.01")) is not None, market)

    expected_buy = (Decimal("0.01") * Decimal("61240.25") + Decimal("0.02") * Decimal("61241")) / Decimal("0.03")
    assert market.taker_price("BTC-USD", Side.BUY, Decimal("0.03")) == expected_buy
    expected_sell = (Decimal("0.02") * Decimal("61234.50") + Decimal("0.03") * Decimal("61230")) / Decimal("0.05")
    assert market.taker_price("BTC-USD", Side.SELL, Decimal("0.05")) == expected_sell
    assert market.taker_price("BTC-USD", Side.SELL, Decimal("0.53")) is None  # deeper than the book
    paper = SimulatedExchange(market)  # the default paper account holds USD
    filled = paper.place_order(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.03"), "l2-buy"))
    assert filled.average_fill_price == Decimal("61240.75")  # the walk, rounded up to the cent: no slippage model

    del offers[Decimal("61240.25")]  # the best offer is taken: "0" removes the level
    ws.set_book("BTC-USD", bids, offers)
    assert until(lambda: market.taker_price("BTC-USD", Side.BUY, Decimal("0.01")) == Decimal("61241"), market)

    reconnects = market.feed.stats.reconnects
    ws.skip(2)  # a missed message may be a book update: the books go, the feed reconnects for new snapshots
    assert until(lambda: market.feed.stats.reconnects > reconnects, market)
    assert until(lambda: market.taker_price("BTC-USD", Side.BUY, Decimal("0.01")) == Decimal("61241"), market)
    assert sum(market.feed.stats.gaps.values()) == 1


def test_rest_polling_carries_on_while_the_socket_is_down_and_the_ticker_takes_over_again(
    exchange: AdvancedTradeServer, ws: WsTestServer, market: CoinbaseWsMarketData
) -> None:
    assert until(lambda: market.feed.stats.messages["ticker"] >= 1, market)
    exchange.set_price("BTC-USD", BID - 10, ASK - 10)  # over the ticker only: the REST book was read at the start
    assert until(lambda: market.quote("BTC-USD") == (BID - 10, ASK - 10), market)
    port = int(ws.url.rsplit(":", 1)[1])
    ws.stop()  # the WebSocket server is gone; the HTTPS server is not
    assert until(lambda: not market.feed.stats.connected, market)
    assert market.quote("BTC-USD") == (BID - 10, ASK - 10)  # until the next refresh: the newer of ticker and book
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
        "COINBASE_WS_URL": ws.url,  # MARKET_DATA=coinbase-ws is canary's default
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


def test_the_guards_read_the_sockets_downtime_and_disconnects_and_restart_it(
    exchange: AdvancedTradeServer, ws: WsTestServer, tmp_path: Path
) -> None:
    """Thresholds of a fraction of a second stand for the runbook's 5 / 15 minutes and 3 / 10 an hour."""
    settings = load_settings(
        profile="dev",
        state_dir=tmp_path / "state",
        log_dir=tmp_path / "logs",
        broker="simulated",
        coinbase_api_base=exchange.base_url,
        coinbase_ca_file=exchange.ca_file,
        trading_symbols="BTC-USD",
        market_data="coinbase-ws",
        coinbase_ws_url=ws.url,
        strategy_fast_window=2,
        strategy_slow_window=3,
        heartbeat_interval_seconds=0,
        data_gate_enabled=False,
        risk_feed_down_warn_seconds=0.3,
        risk_feed_down_critical_seconds=0.8,
        risk_ws_disconnects_warn=1,
        risk_ws_disconnects_critical=2,
    )
    market = build_market_data(settings)
    assert isinstance(market, CoinbaseWsMarketData)
    market.feed.backoff_max = 0.2
    bot = build_bot(settings, broker=SimulatedExchange(market), ledger=Ledger(settings.database_url))
    bot.start()
    levels = bot.risk.monitor.levels
    try:
        assert until(lambda: market.feed.stats.connected, market)
        bot.run_cycle()
        assert (levels["market_data_feed"], levels["websocket_disconnects"]) == ("ok", "ok")

        for expected in ("warning", "critical"):  # one disconnect an "hour" warns, two are critical: alert only
            wanted = market.feed.stats.reconnects + 1
            ws.drop()
            assert market.feed.wait_for(lambda s, n=wanted: s.reconnects >= n and s.connected, 10)
            bot.run_cycle()
            assert levels["websocket_disconnects"] == expected
        assert bot._trading_state == "trading"  # an alert-only guard does not stop trading

        port = int(ws.url.rsplit(":", 1)[1])
        market.feed.backoff_base = market.feed.backoff_max = 60.0
        ws.stop()  # the socket goes down; its first reconnect fails, and the next would be 30-60 s later
        assert market.feed.wait_for(lambda s: s.failed_attempts >= 1, 10)
        back = ws_server(exchange, port)
        try:
            seen = []
            deadline = time.monotonic() + 10
            while levels["market_data_feed"] != "critical" and time.monotonic() < deadline:
                time.sleep(0.1)
                bot.run_cycle()
                seen.append(levels["market_data_feed"])
            assert "warning" in seen and seen[-1] == "critical"  # down 0.3 s: warning; 0.8 s: critical
            assert bot.risk.counters["market_data_feed_trip"] == 1
            # critical restarted the feed: it reconnects now, not after its backoff, and the guard clears
            assert until(lambda: market.feed.stats.connected, market, 5)
            bot.run_cycle()
            assert levels["market_data_feed"] == "ok"
        finally:
            back.stop()
    finally:
        bot.stop()
        market.close()


def test_a_live_broker_takes_its_touch_from_the_ticker_and_reads_rest_only_while_the_socket_is_down(
    exchange: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path
) -> None:
    ws = WsTestServer.beside(exchange).start()
    settings = coinbase_settings(exchange, cdp_key, tmp_path, market_data="coinbase-ws", coinbase_ws_url=ws.url)
    bot = build_bot(settings, broker=CoinbaseBroker.from_settings(settings))
    try:
        broker = bot.broker.inner  # type: ignore[attr-defined]  # the metered broker's own
        assert isinstance(broker, CoinbaseBroker) and broker.market is not None
        assert bot.market_feed is broker.market.feed  # the feed guard and the ws_* metrics read this feed
        broker.market.quote_max_age = 60.0  # a loaded machine's pauses do not age the tick out (not this test's point)
        market = broker.market
        assert market.feed.wait_for(lambda stats: stats.connected and stats.messages["ticker"] >= 1, 10)
        exchange.set_price("BTC-USD", BID + 1, ASK + 1)
        assert until(lambda: market.live_quote("BTC-USD") == (BID + 1, ASK + 1), market)  # over the ticker
        exchange.clear_requests()
        assert broker.best_bid_ask("BTC-USD") == (BID + 1, ASK + 1)
        assert not any(r.path.endswith("/best_bid_ask") for r in exchange.requests)  # the ticker, no REST read

        ws.stop()
        assert until(lambda: not broker.market.feed.stats.connected, broker.market)  # type: ignore[union-attr]
        exchange.set_price("BTC-USD", BID + 2, ASK + 2)
        assert broker.best_bid_ask("BTC-USD") == (BID + 2, ASK + 2)  # the socket down: REST, current
        assert any(r.path.endswith("/best_bid_ask") for r in exchange.requests)
    finally:
        broker.market.close()  # type: ignore[union-attr]
        ws.stop()
