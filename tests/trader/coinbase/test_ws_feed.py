"""trader/coinbase/ws.py against the local WebSocket server (trader/testing/advanced_trade/ws.py): real sockets,
real JWTs from the SDK's generator, faults caused on the server (dropped TCP streams, 1001 closes, skipped
sequence numbers, silent heartbeats, refused subscribes)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from coinbase import jwt_generator

from trader.coinbase.ws import FeedStats, Subscription, WsFeed, ws_url
from trader.errors import ConfigError
from trader.metrics.exporter import BotMetrics
from trader.testing.advanced_trade import generate_cdp_key
from trader.testing.advanced_trade.ws import WsTestServer

KEY = generate_cdp_key("organizations/test/apiKeys/ws-feed")
CHANNELS = (Subscription("heartbeats"), Subscription("ticker", ("BTC-USD",)), Subscription("user"))
EXPECTED = {("heartbeats", ()), ("ticker", ("BTC-USD",)), ("user", ())}


@pytest.fixture
def server() -> Iterator[WsTestServer]:
    with WsTestServer(key_name=KEY.name, public_key_pem=KEY.public_key_pem, heartbeat_seconds=0.05) as running:
        yield running


class Recorder:
    """The handler: every message by channel; raises on the channels it is told to."""

    def __init__(self, fail_on: tuple[str, ...] = ()) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.messages.append(message)
        if message["channel"] in self.fail_on:
            raise RuntimeError(f"handler broke on {message['channel']}")

    def on(self, channel: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m["channel"] == channel]


class Tokens:
    """The SDK's WebSocket JWT, counted: one per subscribe message."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self) -> str:
        self.made += 1
        return str(jwt_generator.build_ws_jwt(KEY.name, KEY.private_key_pem))


def feed(server: WsTestServer, handler: Callable[[dict[str, Any]], None], **options: Any) -> WsFeed:
    options.setdefault("jwt", Tokens())
    options.setdefault("stale_seconds", 2.0)
    return WsFeed(server.url, CHANNELS, handler, backoff_base=0.05, backoff_max=0.2, **options)


def subscribed(server: WsTestServer, connection: int) -> set[tuple[str, tuple[str, ...]]]:
    return {(s.channel, s.product_ids) for s in server.subscribes if s.connection == connection}


def beats_after(count: int) -> Callable[[FeedStats], bool]:
    return lambda stats: stats.connected and stats.messages["heartbeats"] >= count


def test_every_channel_is_resubscribed_with_a_fresh_jwt_after_a_dropped_stream_and_a_1001_close(
    server: WsTestServer,
) -> None:
    recorder, tokens, resyncs = Recorder(), Tokens(), []
    live = feed(server, recorder, jwt=tokens, on_reconnect=lambda: resyncs.append(live.stats.reconnects)).start()
    try:
        assert live.wait_for(beats_after(3), 10), live.stats
        assert subscribed(server, 1) == EXPECTED
        assert all(s.authenticated for s in server.subscribes) and server.refusals == []

        server.drop()  # the TCP stream aborted: no close frame
        assert live.wait_for(lambda s: s.reconnects == 1 and s.connected, 10), live.stats
        beats = live.stats.messages["heartbeats"]
        assert live.wait_for(beats_after(beats + 3), 10)
        server.close(1001)  # "going away": the SDK stops here; the feed reconnects
        assert live.wait_for(lambda s: s.reconnects == 2 and s.connected, 10), live.stats
        assert live.wait_for(beats_after(live.stats.messages["heartbeats"] + 3), 10)

        assert server.connections == 3
        assert subscribed(server, 2) == EXPECTED and subscribed(server, 3) == EXPECTED
        assert tokens.made == 9  # a JWT made for each subscribe of each connection
        assert resyncs == [1, 2]  # a resync after each reconnect, none at the first connect
        assert len(live.stats.disconnects) == 2 and live.stats.disconnects_within(3600) == 2
        assert live.stats.failed_attempts == 0  # both connections delivered before they died: no backoff after them
        assert server.publish("ticker", [{"type": "update", "tickers": [{"product_id": "BTC-USD"}]}]) == 1
        assert live.wait_for(lambda s: s.messages["ticker"] == 1, 5)
        assert recorder.on("ticker")[0]["events"][0]["tickers"][0]["product_id"] == "BTC-USD"
    finally:
        live.stop()


def test_a_skipped_sequence_number_is_a_gap_reported_for_resync_and_the_feed_reads_on(server: WsTestServer) -> None:
    recorder, gaps = Recorder(), []
    live = feed(server, recorder, on_gap=lambda channel, expected, got: gaps.append((channel, expected, got))).start()
    try:
        assert live.wait_for(beats_after(3), 10)
        server.skip(5)
        assert live.wait_for(lambda s: sum(s.gaps.values()) == 1, 10), live.stats
        beats = live.stats.messages["heartbeats"]
        assert live.wait_for(beats_after(beats + 3), 10)  # and it reads on, on the same connection

        [(channel, expected, got)] = gaps
        assert channel == "heartbeats" and got == expected + 5
        numbers = [m["sequence_num"] for m in recorder.messages]
        assert numbers == sorted(numbers) and expected not in numbers and got in numbers
        assert live.stats.reconnects == 0 and live.stats.gaps == {"heartbeats": 1}
    finally:
        live.stop()


def test_silent_heartbeats_trip_the_watchdog_which_reconnects_until_they_come_back(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    live = feed(server, Recorder(), stale_seconds=0.5).start()
    try:
        assert live.wait_for(beats_after(3), 10)
        server.silence()
        assert live.wait_for(lambda s: s.reconnects >= 1, 5), live.stats
        assert "no message in 0.5 s; reconnecting" in caplog.text
        server.silence(False)
        beats = live.stats.messages["heartbeats"]
        assert live.wait_for(beats_after(beats + 5), 10)
    finally:
        live.stop()


def test_a_refused_subscribe_is_said_and_retried_until_the_server_accepts_it(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.refuse_auth(2)
    live = feed(server, Recorder()).start()
    try:
        assert live.wait_for(beats_after(3), 10), live.stats
        assert server.refusals == ["authentication failure", "authentication failure"]
        assert "refused by the server: authentication failure" in caplog.text
        assert subscribed(server, server.connections) == EXPECTED
    finally:
        live.stop()


OTHER_KEY = generate_cdp_key(KEY.name)  # the same name, another private key: a forged token


@pytest.mark.parametrize(
    ("jwt", "refusal"),
    [
        (None, "channel user requires a jwt"),
        (lambda: str(jwt_generator.build_ws_jwt(OTHER_KEY.name, OTHER_KEY.private_key_pem)), "invalid jwt signature"),
    ],
)
def test_the_user_channel_without_a_valid_jwt_is_refused_by_the_server(
    jwt: Callable[[], str] | None, refusal: str
) -> None:
    with WsTestServer(key_name=KEY.name, public_key_pem=KEY.public_key_pem) as server:
        live = WsFeed(server.url, [Subscription("user")], Recorder(), jwt=jwt, backoff_base=0.05, backoff_max=0.1)
        live.start()
        try:
            assert live.wait_for(lambda _: len(server.refusals) >= 2, 10)
            assert set(server.refusals) == {refusal} and server.subscribes == []
            assert live.stats.messages["user"] == 0 and not live.stats.connected
        finally:
            live.stop()


def test_an_exception_in_the_handler_is_logged_with_its_traceback_counted_and_the_feed_carries_on(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(fail_on=("ticker",))
    live = feed(server, recorder).start()
    try:
        assert live.wait_for(beats_after(2), 10)
        with caplog.at_level(logging.ERROR, logger="trader.coinbase.ws"):
            server.publish("ticker", [{"type": "update", "tickers": []}])
            server.publish("ticker", [{"type": "update", "tickers": []}])
            assert live.wait_for(lambda s: s.handler_errors == 2, 5), live.stats
        beats = live.stats.messages["heartbeats"]
        assert live.wait_for(beats_after(beats + 3), 10)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "trader.coinbase.ws"]
        assert len(errors) == 2 and "handler (ticker) raised" in errors[0].getMessage()
        assert errors[0].exc_info is not None and "handler broke on ticker" in str(errors[0].exc_info[1])
        assert live.stats.reconnects == 0
    finally:
        live.stop()


@pytest.mark.parametrize(
    "url", ["https://advanced-trade-ws.coinbase.com", "advanced-trade-ws.coinbase.com", "ws://", "ws://example.com"]
)
def test_a_url_that_is_not_a_websocket_url_is_one_line_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError) as error:
        ws_url(url, "COINBASE_WS_URL")
    message = str(error.value)
    assert "\n" not in message and message.startswith("COINBASE_WS_URL=") and "wss://" in message


def test_the_runbooks_heartbeat_typo_names_the_channel_it_meant() -> None:
    with pytest.raises(ConfigError) as error:
        Subscription("heartbeat")
    assert "unknown WebSocket channel 'heartbeat' (did you mean 'heartbeats'?)" in str(error.value)
    assert ws_url("wss://advanced-trade-ws.coinbase.com", "COINBASE_WS_URL") == "wss://advanced-trade-ws.coinbase.com"


def test_the_feeds_state_is_exported_as_metrics_and_in_health(server: WsTestServer) -> None:
    metrics = BotMetrics(account="alpha")
    live = feed(server, Recorder())
    metrics.attach_ws_feed(live)
    live.start()
    try:
        assert live.wait_for(beats_after(3), 10)
        server.skip(2)
        assert live.wait_for(lambda s: sum(s.gaps.values()) == 1, 10)
        server.drop()
        assert live.wait_for(lambda s: s.reconnects == 1 and s.connected, 10)
        text = metrics.render().decode()
        health = metrics.health()["websocket"]
    finally:
        live.stop()

    def sample(name: str, **labels: str) -> float:
        wanted = ",".join(f'{k}="{v}"' for k, v in {"account": "alpha", **labels}.items())
        [line] = [x for x in text.splitlines() if x.startswith(f"{name}{{{wanted}}} ")]
        return float(line.rsplit(" ", 1)[1])

    assert sample("perps_bot_ws_connected", channel="heartbeats") == 1.0
    assert sample("perps_bot_ws_connected", channel="user") == 1.0
    assert sample("perps_bot_ws_reconnects_total") == 1.0
    assert sample("perps_bot_ws_sequence_gaps_total", channel="heartbeats") == 1.0
    assert sample("perps_bot_ws_messages_total", channel="heartbeats") >= 3
    lagged = sample("perps_bot_ws_message_lag_seconds_count")  # every message with a timestamp, at render time
    assert 0 < lagged <= live.stats.lag_count and sample("perps_bot_ws_message_lag_seconds_bucket", le="+Inf") == lagged
    assert health["connected"] is True and health["reconnects"] == 1 and health["gaps"] == 1
    assert health["disconnects_last_hour"] == 1 and health["last_message_age_seconds"] < 5
    assert "websocket" not in BotMetrics(account="beta").health()  # no feed, no section


def test_every_connect_checks_the_clock_and_names_a_skew_that_would_break_jwts(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    readings = iter([2.5, -0.2])
    live = feed(server, Recorder(), clock_skew=lambda: next(readings)).start()
    try:
        assert live.wait_for(beats_after(2), 10)
        assert live.stats.clock_skew_seconds == 2.5
        assert "the local clock is 2.50 s ahead of the exchange's (more than 1 s): JWTs may be refused" in caplog.text
        server.drop()
        assert live.wait_for(lambda s: s.reconnects == 1 and s.connected, 10)
        assert live.stats.clock_skew_seconds == -0.2  # measured again at the reconnect, within bounds: no warning
        assert caplog.text.count("JWTs may be refused") == 1
    finally:
        live.stop()


def test_a_clock_check_that_fails_is_said_and_the_feed_connects_anyway(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    def unreachable() -> float:
        raise OSError("exchange clock unreachable")

    live = feed(server, Recorder(), clock_skew=unreachable).start()
    try:
        assert live.wait_for(beats_after(2), 10)
        assert "clock skew not checked (exchange clock unreachable)" in caplog.text
        assert live.stats.clock_skew_seconds is None
    finally:
        live.stop()
