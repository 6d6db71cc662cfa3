"""WebSocket timings: fill-to-ledger over the user channel against REST polling, reconnects, consumer throughput.

    .venv/bin/python bench/ws.py [--fills 40] [--interval 5] [--drops 20] [--messages 50000]

All on loopback, real parts: the HTTPS Advanced Trade test server and the WebSocket test server sharing its exchange,
the SDK's REST client and JWTs, the bot's own order path, run loop and ledger (SQLite in a scratch folder).

- Fill latency: two bots in the same run, each on its own exchange, both cycling every --interval seconds: one with
  ORDER_UPDATES=coinbase-ws, one polling REST each cycle (ORDER_UPDATES=poll, the baseline). The bench places a
  resting limit order through each bot's order path, waits a random part of the interval, fills it on the exchange
  and times until the fill is committed to that bot's ledger (`record_fills` returned with its trade id). --fills
  orders per bot, p50/p99 and the ratio polling / WebSocket.
- Reconnect: --drops TCP drops of the user channel (no close frame), each timed from the drop to the first message
  on the new connection (subscribed again). p50 and max.
- Throughput: a WebSocket server in a child process (its own interpreter: its sends do not share our GIL) sends
  --messages user-channel updates as fast as it can; figure: messages per second through the bot's consumer
  (UserOrderStream: parse, sequence check, stats, newest-state merge) against a bare `websockets` client that only
  parses JSON (the baseline), both from the same server in the same run.

The last line is one JSON object: ws_fill_p50_ms, ws_fill_p99_ms, poll_fill_p50_ms, poll_fill_p99_ms,
reconnect_s_p50, reconnect_s_max, msgs_per_s (goals: ws_fill_p99_ms <= 100, >= 10x better than polling, >= 5,000
msgs/s).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trader.bot import TradingBot  # noqa: E402
from trader.brokers.coinbase import CoinbaseBroker  # noqa: E402
from trader.brokers.coinbase_user import UserOrderStream  # noqa: E402
from trader.coinbase.ws import FeedStats  # noqa: E402
from trader.domain import Candle, Fill, OrderRequest, OrderType, Product, Side  # noqa: E402
from trader.runtime import build_bot  # noqa: E402
from trader.settings import load_settings  # noqa: E402
from trader.strategy import OrderIntent, Strategy  # noqa: E402
from trader.testing.advanced_trade import AdvancedTradeServer, generate_cdp_key  # noqa: E402
from trader.testing.advanced_trade.ws import WsTestServer  # noqa: E402

BUILD_LOCK = threading.Lock()


class Idle(Strategy):
    """Never trades: every order is the bench's own."""

    warmup = 1

    def decide(self, product: Product, candles: Sequence[Candle], position: Decimal) -> list[OrderIntent]:
        return []


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """(p50, p99, max) of the samples."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, ordered[-1]


class TimedLedger:
    """Wraps a bot's ledger.record_fills: the perf_counter time each trade id was committed."""

    def __init__(self, bot: TradingBot) -> None:
        self.recorded: dict[str, float] = {}
        self.changed = threading.Condition()
        original = bot.ledger.record_fills

        def record_fills(fills: list[Fill], session_id: str | None = None) -> int:
            new = original(fills, session_id)
            now = time.perf_counter()
            with self.changed:
                for fill in fills:
                    self.recorded.setdefault(fill.trade_id, now)
                self.changed.notify_all()
            return new

        bot.ledger.record_fills = record_fills  # type: ignore[method-assign]

    def wait(self, trade_id: str, timeout: float) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: trade_id in self.recorded, timeout):
                raise TimeoutError(f"fill {trade_id} not in the ledger within {timeout:g} s")
            return self.recorded[trade_id]


@contextmanager
def running_bot(folder: Path, updates: str, interval: float) -> Iterator[tuple[TradingBot, AdvancedTradeServer]]:
    """An exchange (HTTPS + WebSocket) and a live bot on it in its run loop, cycling every `interval` seconds."""
    key = generate_cdp_key(f"organizations/bench/apiKeys/{uuid.uuid4()}")
    with ExitStack() as stack:
        exchange = AdvancedTradeServer(key_name=key.name, public_key_pem=key.public_key_pem, cert_dir=folder / "tls")
        exchange.start()
        stack.callback(exchange.stop)
        ws = WsTestServer.beside(exchange).start()
        stack.callback(ws.stop)
        settings = load_settings(
            profile="dev",
            broker="coinbase",
            coinbase_key_file=key.write_key_file(folder / "key.json"),
            coinbase_api_base=exchange.base_url,
            coinbase_ca_file=exchange.ca_file,
            coinbase_ws_user_url=ws.url,
            order_updates=updates,
            state_dir=folder / "state",
            log_dir=folder / "logs",
            data_gate_enabled=False,
            heartbeat_interval_seconds=0,
        )
        with BUILD_LOCK:  # alembic's migration context is process-global: one bot migrates its ledger at a time
            bot = build_bot(settings, broker=CoinbaseBroker.from_settings(settings))
            bot.strategy = Idle()
            bot.start()
        stop = threading.Event()
        loop = threading.Thread(target=lambda: bot.run(interval_seconds=interval, should_stop=stop.is_set))
        loop.start()
        try:
            if bot.user_orders is not None and not bot.user_orders.feed.wait_for(lambda s: s.connected, 10):
                raise RuntimeError("the user channel did not connect")
            yield bot, exchange
        finally:
            stop.set()
            loop.join(interval + 10)
            bot.stop()


def fill_latencies(bot: TradingBot, exchange: AdvancedTradeServer, fills: int, interval: float) -> list[float]:
    """Seconds from a fill on the exchange to its commit in the bot's ledger, for `fills` resting orders."""
    timed = TimedLedger(bot)
    latencies = []
    for n in range(fills):
        bid, _ = exchange.quote("BTC-USD")
        request = OrderRequest(
            "BTC-USD",
            Side.BUY,
            OrderType.LIMIT,
            Decimal("0.001"),
            f"bench-{n}-{uuid.uuid4().hex[:8]}",
            (bid * Decimal("0.9")).quantize(Decimal("0.01")),
        )
        outcome = bot.orders.send(request, position=Decimal(0))
        assert outcome.order is not None, outcome
        time.sleep(random.uniform(0, interval))  # a random phase against the bot's cycle
        started = time.perf_counter()
        fill = exchange.fill_order(outcome.order.order_id)
        latencies.append(timed.wait(fill.trade_id, interval * 3 + 10) - started)
    return latencies


def reconnect_times(folder: Path, drops: int) -> list[float]:
    """Seconds from a dropped TCP stream to the first message of the next connection, `drops` times."""
    key = generate_cdp_key(f"organizations/bench/apiKeys/{uuid.uuid4()}")
    with WsTestServer(key_name=key.name, public_key_pem=key.public_key_pem, heartbeat_seconds=1.0) as server:
        from coinbase import jwt_generator

        stream = UserOrderStream(server.url, lambda: str(jwt_generator.build_ws_jwt(key.name, key.private_key_pem)))
        stream.start()
        try:
            if not stream.feed.wait_for(lambda s: s.connected, 10):
                raise RuntimeError("the user channel did not connect")
            times = []
            for _ in range(drops):
                connects = stream.feed.stats.connects
                received = sum(stream.feed.stats.messages.values())

                def back(stats: FeedStats, connects: int = connects, received: int = received) -> bool:
                    return stats.connects > connects and stats.connected and sum(stats.messages.values()) > received

                started = time.perf_counter()
                server.drop()
                if not stream.feed.wait_for(back, 30):
                    raise RuntimeError("no reconnect within 30 s")
                times.append(time.perf_counter() - started)
            return times
        finally:
            stream.stop()


BURST_SERVER = """
import sys, time
sys.path.insert(0, {root!r})
from trader.testing.advanced_trade.ws import WsTestServer
order = {{"order_id": "o-{{}}", "client_order_id": "c-1", "product_id": "BTC-USD", "order_side": "BUY",
          "order_type": "Limit", "status": "OPEN", "creation_time": "2026-12-04T10:00:00Z",
          "cumulative_quantity": "0", "leaves_quantity": "1", "avg_price": "0", "total_fees": "0",
          "limit_price": "60000"}}
with WsTestServer(key_name={name!r}, public_key_pem={pem!r}, heartbeat_seconds=3600) as server:
    print(server.url, flush=True)
    for _ in range(2):  # the consumer under test, then the baseline client
        seen = len(server.subscribes)
        while not any(s.channel == "user" for s in server.subscribes[seen:]):
            time.sleep(0.01)
        time.sleep(0.2)
        for n in range({messages}):
            server.publish("user", [{{"type": "update", "orders": [dict(order, order_id=f"o-{{n % 1000}}")]}}])
        server.close(1000, "done")
        sys.stdin.readline()
"""


def throughput(messages: int) -> tuple[float, float]:
    """(messages/s through UserOrderStream, messages/s through a bare JSON-parsing client) from a child server."""
    key = generate_cdp_key(f"organizations/bench/apiKeys/{uuid.uuid4()}")
    script = BURST_SERVER.format(root=str(ROOT), name=key.name, pem=key.public_key_pem.decode(), messages=messages)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        url = child.stdout.readline().strip()
        from coinbase import jwt_generator

        jwt = lambda: str(jwt_generator.build_ws_jwt(key.name, key.private_key_pem))  # noqa: E731
        stream = UserOrderStream(url, jwt, stale_seconds=30)
        first: list[float] = []
        counted = stream._on_message

        def on_message(message: dict[str, Any]) -> None:
            events = message.get("events") or [{}]
            if not first and message.get("channel") == "user" and events[0].get("type") == "update":
                first.append(time.perf_counter())  # the burst's first message (the subscribe's snapshot is not)
            counted(message)

        stream.feed.handler = on_message
        stream.start()
        if not stream.feed.wait_for(lambda s: s.messages["user"] >= messages + 1, 300):  # the snapshot, the burst
            raise RuntimeError(f"{stream.feed.stats.messages['user'] - 1} of {messages} messages arrived")
        ours = messages / (time.perf_counter() - first[0])
        stream.stop()
        child.stdin.write("\n")
        child.stdin.flush()
        baseline = bare_client(url, jwt, messages)
        child.stdin.write("\n")
        child.stdin.flush()
        return ours, baseline
    finally:
        child.wait(30)


def bare_client(url: str, jwt: Callable[[], str], messages: int) -> float:
    from websockets.sync.client import connect

    with connect(url, max_size=2**24) as connection:
        connection.send(json.dumps({"type": "subscribe", "channel": "user", "product_ids": [], "jwt": jwt()}))
        count, started = 0, 0.0
        while count < messages:
            message = json.loads(connection.recv(timeout=60))
            if message.get("channel") == "user" and message["events"][0].get("type") == "update":
                if not count:
                    started = time.perf_counter()
                count += 1
        return messages / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", type=int, default=40, help="fills timed per bot")
    parser.add_argument("--interval", type=float, default=5.0, help="both bots' cycle interval, seconds")
    parser.add_argument("--drops", type=int, default=20, help="user-channel drops timed")
    parser.add_argument("--messages", type=int, default=50_000, help="messages sent for the throughput figure")
    args = parser.parse_args(argv)
    for name in ("fills", "drops", "messages"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    if args.interval <= 0:
        parser.error("--interval must be > 0")

    with tempfile.TemporaryDirectory(prefix="bench-ws-") as scratch:
        root = Path(scratch)
        results: dict[str, list[float]] = {}

        def measure(updates: str) -> None:
            folder = root / updates
            folder.mkdir()
            with running_bot(folder, updates, args.interval) as (bot, exchange):
                results[updates] = fill_latencies(bot, exchange, args.fills, args.interval)

        workers = [threading.Thread(target=measure, args=(u,)) for u in ("coinbase-ws", "poll")]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if set(results) != {"coinbase-ws", "poll"}:
            print("a bot failed; see its error above", file=sys.stderr)
            return 1
        ws_p50, ws_p99, ws_max = (v * 1000 for v in quantiles(results["coinbase-ws"]))
        poll_p50, poll_p99, poll_max = (v * 1000 for v in quantiles(results["poll"]))
        print(f"fill -> ledger, {args.fills} fills per bot, cycle interval {args.interval:g} s (both bots):")
        print(f"  user channel   p50 {ws_p50:8.1f} ms  p99 {ws_p99:8.1f} ms  max {ws_max:8.1f} ms")
        print(f"  REST polling   p50 {poll_p50:8.1f} ms  p99 {poll_p99:8.1f} ms  max {poll_max:8.1f} ms (baseline)")
        print(f"  polling / user channel at p99: {poll_p99 / ws_p99:.0f}x")

        reconnects = reconnect_times(root, args.drops)
        re_p50, _, re_max = quantiles(reconnects)
        print(f"reconnect after a dropped TCP stream, {args.drops} drops: p50 {re_p50:.3f} s  max {re_max:.3f} s")

        ours, bare = throughput(args.messages)
        print(
            f"consumer throughput, {args.messages} user-channel messages from a child-process server: "
            f"UserOrderStream {ours:,.0f} msgs/s, bare JSON client {bare:,.0f} msgs/s (baseline, "
            f"{ours / bare:.0%} of it)"
        )
    print(
        json.dumps(
            {
                "fills_per_bot": args.fills,
                "interval_s": args.interval,
                "ws_fill_p50_ms": round(ws_p50, 1),
                "ws_fill_p99_ms": round(ws_p99, 1),
                "poll_fill_p50_ms": round(poll_p50, 1),
                "poll_fill_p99_ms": round(poll_p99, 1),
                "reconnect_s_p50": round(re_p50, 3),
                "reconnect_s_max": round(re_max, 3),
                "msgs_per_s": round(ours),
                "baseline_msgs_per_s": round(bare),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
