"""A local WebSocket server that speaks Coinbase Advanced Trade's WebSocket shapes, with faults on command.

    with WsTestServer(key_name=key.name, public_key_pem=key.public_key_pem) as server:
        feed = WsFeed(server.url, [Subscription("heartbeats"), Subscription("user")], handler, jwt=...)

What it models (docs.cdp.coinbase.com, Advanced Trade WebSocket):

* One subscribe message per channel: {"type": "subscribe", "channel", "product_ids", "jwt"}. A subscribe that
  carries a JWT is verified like the REST server's (ES256, kid == sub == key name, iss "cdp", nbf/exp) except that a
  WebSocket JWT carries no `uri`; the `user` and `futures_balance_summary` channels require one. A refused subscribe
  gets {"type": "error", "message": ...} and nothing else.
* Every message is {"channel", "client_id", "timestamp", "sequence_num", "events"}; sequence_num counts the
  messages of one connection across all its channels, from 0 (as Coinbase's own feed numbers them). A subscribe is
  acknowledged on the "subscriptions" channel (and `user` opens with a snapshot). `heartbeats` subscribers get one
  message per `heartbeat_seconds` with a heartbeat_counter; `publish()` sends any channel's events to that
  channel's subscribers.
* Faults, each on every open connection: `drop()` (the TCP connection aborted, no close frame), `close(code)`
  (a close frame, 1001 "going away" by default), `skip(n)` (the next message's sequence_num jumps by n),
  `silence(on)` (no heartbeats), `refuse_auth(n)` (the next n subscribes get an error), `slow(seconds)` (every send
  waits that long first).
* `ticker`: with `quotes` (AdvancedTradeServer.quote), a subscribe opens with a snapshot of each product's best bid
  and ask; `ticker()` sends an update (AdvancedTradeServer.on_price(ws.ticker): one per price move).
* `user`: a subscribe opens with the open orders (`open_orders`, AdvancedTradeServer.open_user_orders) in snapshot
  messages of at most 50 orders each (one empty snapshot when there are none), as Coinbase batches them; `orders()`
  sends an update with orders that changed (AdvancedTradeServer.on_orders(ws.orders): an order placed, filled,
  cancelled or expired over REST or by a price move reaches the user channel).
* `level2`: messages on the `l2_data` channel, as Coinbase names them. `set_book(product, bids, offers)` sets a
  product's book (price -> quantity, absolute) and sends the changes as an update (`new_quantity` "0" removes a
  level); a subscribe opens with a snapshot of each product's book.
* `WsTestServer.beside(rest_server)` wires a server to the HTTPS test server's exchange: its quotes and its orders.

`subscribes` records each accepted subscribe as (connection number, channel, product_ids, authenticated), so tests
assert what was resubscribed after a reconnect. JWTs are never logged or kept.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from trader.testing.advanced_trade.keys import jwt_problem, load_public_key

if TYPE_CHECKING:
    from trader.testing.advanced_trade.server import AdvancedTradeServer

AUTH_CHANNELS = frozenset({"user", "futures_balance_summary"})
CHANNELS = frozenset({"heartbeats", "ticker", "ticker_batch", "candles", "level2", "market_trades", "status"})
CHANNELS |= AUTH_CHANNELS
SNAPSHOT_BATCH = 50  # open orders per user-channel snapshot message
WIRE_NAMES = {"level2": "l2_data"}  # Coinbase sends level2 on a channel of another name


@dataclass(frozen=True)
class Subscribe:
    connection: int
    channel: str
    product_ids: tuple[str, ...]
    authenticated: bool


class _Client:
    """One open connection: its channels and its sequence counter."""

    def __init__(self, number: int, connection: ServerConnection) -> None:
        self.number = number
        self.connection = connection
        self.channels: dict[str, tuple[str, ...]] = {}
        self.sequence = 0
        self.lock = threading.Lock()


class WsTestServer:
    """ws://127.0.0.1:<free port>; start() / stop() or a with block."""

    def __init__(
        self,
        *,
        key_name: str,
        public_key_pem: bytes,
        heartbeat_seconds: float = 0.1,
        quotes: Callable[[str], tuple[Decimal, Decimal]] | None = None,
        open_orders: Callable[[], list[dict[str, Any]]] | None = None,
        port: int = 0,
    ) -> None:
        """quotes: the (bid, ask) of a product (AdvancedTradeServer.quote), for the ticker channel's snapshot;
        open_orders: the user channel's snapshot (AdvancedTradeServer.open_user_orders); port: 0 for a free one, or
        the port of a stopped server to bring it back where its clients reconnect."""
        self.key_name = key_name
        self.port = port
        self.quotes = quotes
        self.open_orders = open_orders
        self.books: dict[str, dict[str, dict[Decimal, Decimal]]] = {}  # product -> "bid"/"offer" -> price -> qty
        self._public_key = load_public_key(public_key_pem)
        self.heartbeat_seconds = heartbeat_seconds
        self.subscribes: list[Subscribe] = []
        self.refusals: list[str] = []
        self._clients: dict[int, _Client] = {}
        self._connections = 0
        self._lock = threading.Lock()
        self._skip = 0
        self._silent = False
        self._refuse = 0
        self._slow = 0.0
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._threads: list[threading.Thread] = []

    @classmethod
    def beside(cls, rest: AdvancedTradeServer, **options: Any) -> WsTestServer:
        """A server sharing `rest`'s exchange: its quotes on `ticker`, its orders on `user` (snapshot and updates);
        the same key verifies both. Not started."""
        options.setdefault("key_name", rest.key_name)
        server = cls(
            public_key_pem=rest.public_key_pem, quotes=rest.quote, open_orders=rest.open_user_orders, **options
        )
        rest.on_price(server.ticker)
        rest.on_orders(server.orders)
        return server

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> WsTestServer:
        self._server = serve(self._serve, "127.0.0.1", self.port)
        for target, name in ((self._server.serve_forever, "ws-test-server"), (self._beat, "ws-test-heartbeats")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop listening and close every connection (1001, as a server going down does)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
        self.close(1001, "server stopped")
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> WsTestServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        port = self._server.socket.getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self._connections

    # --- what tests send and break ------------------------------------------------------------------------------

    def publish(self, channel: str, events: list[dict[str, Any]], product_id: str | None = None) -> int:
        """Send `events` on `channel` to every connection subscribed to it (to `product_id`, when given)."""
        sent = 0
        for client in self._open():
            products = client.channels.get(channel)
            if products is None or (product_id is not None and products and product_id not in products):
                continue
            sent += self._send(client, channel, events)
        return sent

    def ticker(self, product_id: str, bid: Decimal, ask: Decimal) -> int:
        """A ticker update with this touch (AdvancedTradeServer.on_price(ws.ticker) sends one per price move)."""
        return self.publish("ticker", [{"type": "update", "tickers": [_ticker(product_id, bid, ask)]}], product_id)

    def set_book(self, product_id: str, bids: dict[Decimal, Decimal], offers: dict[Decimal, Decimal]) -> int:
        """Make this the product's level2 book and send what changed as one update on l2_data."""
        with self._lock:
            old = self.books.get(product_id, {"bid": {}, "offer": {}})
            new = {"bid": dict(bids), "offer": dict(offers)}
            self.books[product_id] = new
        changes = [
            _level(side, price, new[side].get(price, Decimal(0)))
            for side in ("bid", "offer")
            for price in sorted(set(old[side]) | set(new[side]))
            if old[side].get(price) != new[side].get(price)
        ]
        event = {"type": "update", "product_id": product_id, "updates": changes}
        return self.publish("level2", [event], product_id)

    def orders(self, orders: list[dict[str, Any]]) -> int:
        """A user-channel update with these orders (AdvancedTradeServer.on_orders(ws.orders) sends each change)."""
        return self.publish("user", [{"type": "update", "orders": orders}])

    def drop(self) -> None:
        """Abort every connection's TCP stream: no close frame, as a network failure leaves it."""
        for client in self._open():
            sock = client.connection.socket
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self, code: int = 1001, reason: str = "going away") -> None:
        """Close every connection with a close frame (1001: the server is going away, e.g. a deploy)."""
        for client in self._open():
            client.connection.close(code, reason)

    def skip(self, count: int) -> None:
        """The next message of each connection skips `count` sequence numbers."""
        self._skip = count

    def silence(self, on: bool = True) -> None:
        """Stop (or resume) the heartbeats."""
        self._silent = on

    def refuse_auth(self, count: int = 1) -> None:
        """Refuse the next `count` subscribes as unauthenticated."""
        self._refuse = count

    def slow(self, seconds: float) -> None:
        """Every send waits `seconds` first (a slow server)."""
        self._slow = seconds

    # --- serving ------------------------------------------------------------------------------------------------

    def _open(self) -> list[_Client]:
        with self._lock:
            return list(self._clients.values())

    def _serve(self, connection: ServerConnection) -> None:
        with self._lock:
            self._connections += 1
            client = _Client(self._connections, connection)
            self._clients[client.number] = client
        try:
            for raw in connection:
                self._on_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._clients.pop(client.number, None)

    def _on_message(self, client: _Client, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
            kind, channel = message["type"], message["channel"]
            products = tuple(message.get("product_ids") or ())
        except (ValueError, KeyError, TypeError):
            self._error(client, "malformed subscribe message")
            return
        if channel not in CHANNELS:
            self._error(client, f"unknown channel {channel!r}")
            return
        token = message.get("jwt")
        problem = None
        if self._refuse > 0:
            self._refuse -= 1
            problem = "authentication failure"
        elif token is not None:
            problem = jwt_problem(f"Bearer {token}", self._public_key, self.key_name, None, time.time())
        elif channel in AUTH_CHANNELS:
            problem = f"channel {channel} requires a jwt"
        if problem is not None:
            self.refusals.append(problem)
            self._error(client, problem)
            return
        if kind == "unsubscribe":
            client.channels.pop(channel, None)
            return
        client.channels[channel] = products
        self.subscribes.append(Subscribe(client.number, channel, products, token is not None))
        self._send(client, "subscriptions", [{"subscriptions": {c: list(p) for c, p in client.channels.items()}}])
        if channel == "user":  # Coinbase opens the user channel with the open orders, batched by 50
            orders = self.open_orders() if self.open_orders is not None else []
            for start in range(0, max(len(orders), 1), SNAPSHOT_BATCH):
                self._send(client, "user", [{"type": "snapshot", "orders": orders[start : start + SNAPSHOT_BATCH]}])
        if channel == "level2":  # level2 with each product's book
            for product in products:
                with self._lock:
                    book = self.books.get(product, {"bid": {}, "offer": {}})
                    levels = [_level(side, p, q) for side in ("bid", "offer") for p, q in sorted(book[side].items())]
                self._send(client, "level2", [{"type": "snapshot", "product_id": product, "updates": levels}])
        if channel == "ticker" and self.quotes is not None:  # and the ticker channel with each product's touch
            tickers = [_ticker(p, *self.quotes(p)) for p in products]
            self._send(client, "ticker", [{"type": "snapshot", "tickers": tickers}])

    def _error(self, client: _Client, text: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            client.connection.send(json.dumps({"type": "error", "message": text}))

    def _send(self, client: _Client, channel: str, events: list[dict[str, Any]]) -> int:
        if self._slow:
            time.sleep(self._slow)
        with client.lock:
            if self._skip:
                client.sequence += self._skip
                self._skip = 0
            message = {
                "channel": WIRE_NAMES.get(channel, channel),
                "client_id": "",
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "sequence_num": client.sequence,
                "events": events,
            }
            client.sequence += 1
            try:
                client.connection.send(json.dumps(message))
            except ConnectionClosed:
                return 0
        return 1

    def _beat(self) -> None:
        counter = 0
        while not self._stopping.wait(self.heartbeat_seconds):
            if self._silent:
                continue
            counter += 1
            now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f000 +0000 UTC")
            self.publish("heartbeats", [{"current_time": now, "heartbeat_counter": counter}])


def _level(side: str, price: Decimal, quantity: Decimal) -> dict[str, str]:
    """One level2 change: the level's absolute quantity ("0" removes it)."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {"side": side, "event_time": now, "price_level": str(price), "new_quantity": str(quantity)}


def _ticker(product_id: str, bid: Decimal, ask: Decimal) -> dict[str, str]:
    """One ticker as the channel sends it (the fields the bot reads; Coinbase sends 24 h figures too)."""
    return {
        "type": "ticker",
        "product_id": product_id,
        "price": str((bid + ask) / 2),
        "best_bid": str(bid),
        "best_ask": str(ask),
    }
