"""ORDER_UPDATES=coinbase-ws: the bot hears of its orders on the WebSocket user channel of the local servers (the
HTTPS Advanced Trade server and the WebSocket server sharing one exchange: an order placed or filled there is a
user-channel update). Fills reach the ledger between cycles, without a cycle; a reconnect or a gap is followed by a
REST resync; faults are caused on the server (dropped TCP streams, 1001 closes, skipped sequence numbers)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.processes import wait_for
from tests.trader.test_bot_guards import coinbase_settings
from trader.bot import TradingBot
from trader.brokers.coinbase import CoinbaseBroker
from trader.brokers.coinbase_user import UserOrderStream
from trader.domain import Candle, OrderRequest, OrderStatus, OrderType, Product, Side
from trader.runtime import build_bot
from trader.strategy import OrderIntent, Strategy
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey, Fault
from trader.testing.advanced_trade.ws import WsTestServer

LIST_ORDERS = "/api/v3/brokerage/orders/historical/batch"


class Idle(Strategy):
    warmup = 1
    """A strategy that never trades: every order in these tests is the test's own."""

    def decide(self, product: Product, candles: Sequence[Candle], position: Decimal) -> list[OrderIntent]:
        return []


class Buyer(Strategy):
    warmup = 1
    """One small market buy per cycle."""

    def decide(self, product: Product, candles: Sequence[Candle], position: Decimal) -> list[OrderIntent]:
        return [OrderIntent(product.symbol, Side.BUY, Decimal("0.001"), "test buy", OrderType.MARKET)]


@pytest.fixture
def ws(exchange: AdvancedTradeServer) -> Iterator[WsTestServer]:
    server = WsTestServer.beside(exchange, heartbeat_seconds=0.05).start()
    yield server
    server.stop()


@pytest.fixture
def bot(exchange: AdvancedTradeServer, ws: WsTestServer, cdp_key: CdpKey, tmp_path: Path) -> Iterator[TradingBot]:
    settings = coinbase_settings(exchange, cdp_key, tmp_path, order_updates="coinbase-ws", coinbase_ws_user_url=ws.url)
    bot = build_bot(settings, broker=CoinbaseBroker.from_settings(settings))
    assert isinstance(bot.user_orders, UserOrderStream)
    bot.user_orders.feed.backoff_base, bot.user_orders.feed.backoff_max = 0.02, 0.1
    bot.strategy = Idle()
    yield bot
    if bot.session_id is not None:
        bot.stop()


@pytest.fixture
def running(bot: TradingBot) -> Iterator[TradingBot]:
    """The bot started and in its run loop: one cycle, then an hour's wait that only the user channel interrupts."""
    stop = threading.Event()
    bot.start()
    thread = threading.Thread(target=lambda: bot.run(interval_seconds=3600, should_stop=stop.is_set), daemon=True)
    thread.start()
    wait_for(lambda: bot.cycles == 1 and bot.user_orders is not None and bot.user_orders.connected, 10, "first cycle")
    yield bot
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def resting_buy(bot: TradingBot, exchange: AdvancedTradeServer, quantity: str = "0.002") -> str:
    """A limit buy below the touch through the bot's one order path; its exchange order id."""
    bid, _ask = exchange.quote("BTC-USD")
    request = OrderRequest(
        symbol="BTC-USD",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal(quantity),
        client_order_id=f"test-{uuid.uuid4().hex[:16]}",
        limit_price=(bid * Decimal("0.9")).quantize(Decimal("0.01")),
    )
    outcome = bot.orders.send(request, position=Decimal(0))
    assert outcome.order is not None and outcome.status == OrderStatus.OPEN, outcome
    return outcome.order.order_id


def ledger_order(bot: TradingBot, order_id: str) -> Any:
    return next(o for o in bot.ledger.list_orders() if o.exchange_order_id == order_id)


def ledger_matches(bot: TradingBot, exchange: AdvancedTradeServer) -> Callable[[], bool]:
    """The ledger has exactly the exchange's fills (by trade id) and each order's status and filled quantity."""

    def check() -> bool:
        if {f.trade_id for f in bot.ledger.list_fills()} != {f.trade_id for f in exchange.fills}:
            return False
        records = {o.exchange_order_id: o for o in bot.ledger.list_orders()}
        for order_id, order in exchange.orders.items():
            record = records.get(order_id)
            if record is None or record.filled_quantity != order.filled_size:
                return False
            if (record.status in ("cancelled", "filled")) != (order.status in ("CANCELLED", "FILLED")):
                return False
        return True

    return check


def test_the_exchange_publishes_each_order_change_and_snapshots_open_orders_by_fifty(
    exchange: AdvancedTradeServer, ws: WsTestServer, cdp_key: CdpKey, tmp_path: Path
) -> None:
    settings = coinbase_settings(exchange, cdp_key, tmp_path, order_updates="coinbase-ws", coinbase_ws_user_url=ws.url)
    broker = CoinbaseBroker.from_settings(settings)
    bid, _ = exchange.quote("BTC-USD")
    for n in range(51):
        broker.place_order(
            OrderRequest("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.001"), f"snap-{n}", limit_price=bid - 100 - n)
        )
    stream = UserOrderStream.from_settings(settings).start()
    try:
        assert stream.feed.wait_for(lambda s: s.messages["user"] >= 2, 10)
        first = stream.take()
        assert first.resync and len(first.orders) == 51  # two snapshot messages: 50 + 1
        assert {o.client_order_id for o in first.orders} == {f"snap-{n}" for n in range(51)}

        order_id = first.orders[0].order_id
        exchange.fill_order(order_id, "0.0004")  # a partial fill on the exchange: one update on the channel
        assert stream.wake.wait(5)
        update = stream.take()
        assert not update.resync and update.filled_further == {order_id}
        [partial] = update.orders
        assert (partial.status, partial.filled_quantity, partial.quantity) == (
            OrderStatus.PARTIALLY_FILLED,
            Decimal("0.0004"),
            Decimal("0.001"),
        )
        broker.cancel_orders([order_id])
        assert stream.wake.wait(5)
        [cancelled] = stream.take().orders
        assert cancelled.status == OrderStatus.CANCELLED and cancelled.filled_quantity == Decimal("0.0004")
    finally:
        stream.stop()


def test_an_older_state_never_replaces_a_newer_one() -> None:
    """A snapshot that lands after an update (or a repeated message) changes nothing: less filled, or open after
    a final status, is older."""
    stream = UserOrderStream("ws://127.0.0.1:9", jwt=None)

    def message(status: str, cumulative: str, leaves: str) -> dict[str, Any]:
        order = {
            "order_id": "o-1",
            "client_order_id": "c-1",
            "product_id": "BTC-USD",
            "order_side": "BUY",
            "order_type": "Limit",
            "status": status,
            "creation_time": "2026-12-04T10:00:00Z",
            "cumulative_quantity": cumulative,
            "leaves_quantity": leaves,
            "avg_price": "60000",
            "total_fees": "0.1",
            "limit_price": "60000",
        }
        events = [{"type": "update", "orders": [order]}]
        return {"channel": "user", "timestamp": "2026-12-04T10:00:01Z", "events": events}

    stream._on_message(message("OPEN", "0.5", "0.5"))
    stream._on_message(message("OPEN", "0.2", "0.8"))  # older: less filled
    taken = stream.take()
    assert [o.filled_quantity for o in taken.orders] == [Decimal("0.5")] and taken.filled_further == {"o-1"}
    stream._on_message(message("CANCELLED", "0.5", "0"))
    stream._on_message(message("OPEN", "0.5", "0.5"))  # open again after cancelled: older
    [final] = stream.take().orders
    assert final.status == OrderStatus.CANCELLED and not stream.wake.is_set()


def test_a_fill_reaches_the_ledger_between_cycles_and_a_cancel_too(
    running: TradingBot, exchange: AdvancedTradeServer
) -> None:
    order_id = resting_buy(running, exchange)
    exchange.fill_order(order_id, "0.001")
    wait_for(lambda: ledger_order(running, order_id).filled_quantity == Decimal("0.001"), 5, "the partial fill")
    assert len(running.ledger.list_fills()) == 1 and running.positions["BTC-USD"] == Decimal("0.001")
    assert ledger_order(running, order_id).status == OrderStatus.PARTIALLY_FILLED

    CoinbaseBroker.from_settings(running.settings).cancel_orders([order_id])  # another client cancels it
    wait_for(lambda: ledger_order(running, order_id).status == OrderStatus.CANCELLED, 5, "the cancel")
    assert running.cycles == 1  # all of it between two cycles an hour apart


def test_what_happened_while_the_socket_was_down_comes_back_by_rest_resync(
    running: TradingBot, exchange: AdvancedTradeServer, ws: WsTestServer
) -> None:
    stream = running.user_orders
    assert stream is not None
    first, second = resting_buy(running, exchange), resting_buy(running, exchange)
    port = int(ws.url.rsplit(":", 1)[1])
    ws.stop()  # the user channel is gone: what happens now is never pushed
    exchange.fill_order(first)
    CoinbaseBroker.from_settings(running.settings).cancel_orders([second])
    back = WsTestServer.beside(exchange, heartbeat_seconds=0.05, port=port).start()
    try:
        wait_for(ledger_matches(running, exchange), 10, "the resync after the reconnect")
        assert ledger_order(running, first).status == OrderStatus.FILLED
        assert ledger_order(running, second).status == OrderStatus.CANCELLED
        assert {s.channel for s in back.subscribes} == {"heartbeats", "user"}
        assert running.cycles == 1 and not running.order_resync_due
    finally:
        back.stop()


def test_a_resync_the_exchange_cannot_answer_holds_new_orders_until_it_can(
    bot: TradingBot, exchange: AdvancedTradeServer, ws: WsTestServer
) -> None:
    bot.start()
    stream = bot.user_orders
    assert stream is not None
    wait_for(lambda: stream.connected, 10, "the user channel")
    bot.run_cycle()  # the connect's resync
    exchange.inject(Fault(kind="500", method="GET", path=LIST_ORDERS, times=100))
    ws.skip(5)  # a gap: the next message says what was missed cannot be known
    wait_for(lambda: sum(stream.feed.stats.gaps.values()) == 1, 5, "the gap")
    bot.run_cycle()
    assert bot.order_resync_due

    bot.strategy = Buyer()
    report = bot.run_cycle()
    assert [reason for _, reason in report.refused] == ["order updates resync pending (REST unreachable)"]
    assert not report.orders

    exchange.clear_faults()
    report = bot.run_cycle()
    assert not bot.order_resync_due and [o.status for o in report.orders] == [OrderStatus.FILLED]


def test_a_session_with_a_hundred_drops_and_gaps_misses_no_fill_and_duplicates_none(
    running: TradingBot, exchange: AdvancedTradeServer, ws: WsTestServer
) -> None:
    """100 faults, one per order: a dropped TCP stream, a 1001 close or skipped sequence numbers, with the order
    filled right after the fault (so while the socket is down, for the drops and closes); then filled again or
    cancelled. Only the user channel and its resyncs can record them: the bot's one cycle ran before them."""
    stream = running.user_orders
    assert stream is not None
    faults = Counter[str]()
    for n in range(100):
        order_id = resting_buy(running, exchange, "0.004")
        kind = ("drop", "close", "skip")[n % 3]
        faults[kind] += 1
        connects = stream.feed.stats.connects
        if kind == "drop":
            ws.drop()
        elif kind == "close":
            ws.close(1001)
        else:
            ws.skip(3)
        exchange.fill_order(order_id, "0.001")
        if kind != "skip":
            assert stream.feed.wait_for(lambda stats, c=connects: stats.connects > c, 10), f"reconnect after {n}"
        if n % 2:
            exchange.fill_order(order_id)  # the rest
        else:
            exchange.cancel_order(order_id)  # as the Coinbase UI would
        wait_for(ledger_matches(running, exchange), 10, f"the ledger after fault {n} ({kind})", interval=0.01)

    ledger_fills = [f.trade_id for f in running.ledger.list_fills()]
    assert len(ledger_fills) == len(set(ledger_fills)) == len(exchange.fills) == 150
    assert running.cycles == 1
    stats = stream.feed.stats
    assert stats.reconnects >= faults["drop"] + faults["close"] and sum(stats.gaps.values()) >= faults["skip"]
    by_connection: dict[int, set[str]] = {}
    for subscribe in ws.subscribes:
        by_connection.setdefault(subscribe.connection, set()).add(subscribe.channel)
        assert subscribe.authenticated
    assert len(by_connection) == stats.connects >= 68
    assert all(channels == {"heartbeats", "user"} for channels in by_connection.values())
    assert stream.resyncs_asked >= stats.connects + faults["skip"]


def test_the_post_startup_validation_waits_for_the_user_channel_and_says_when_it_is_not_there(
    bot: TradingBot, ws: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    bot.start()
    checks = {name: (ok, detail) for name, ok, detail in bot.validate_startup(wait_seconds=10)}
    assert checks["user channel"] == (True, "connected") and checks["market channel"][0]
    assert all(ok for ok, _ in checks.values()) or not checks["monitoring"][0]  # no exporter in this test
    assert "post-startup validation: authenticated ok" in caplog.text

    ws.stop()
    assert bot.user_orders is not None and bot.user_orders.feed.wait_for(lambda s: not s.connected, 10)
    checks = {name: (ok, detail) for name, ok, detail in bot.validate_startup(wait_seconds=0.5)}
    assert checks["user channel"] == (False, "not connected after 0.5 s")
    assert "user channel FAILED (not connected after 0.5 s)" in caplog.text
