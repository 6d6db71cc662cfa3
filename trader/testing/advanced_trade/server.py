"""The Advanced Trade test server itself: its lifecycle (start, stop, TLS), test controls and request pipeline.

`AdvancedTradeServer` serves on a `ThreadingHTTPServer` whose connections are TLS with a fresh self-signed
certificate; every request is recorded, may be answered by an injected `Fault`, is authenticated (ES256 JWT) and
authorized (key permissions), then routed to an endpoint of `http._Endpoints` with the one state lock held.
`stop()` returns promptly, also while a handler hangs in an injected timeout.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from trader.testing.advanced_trade.exchange import _Exchange, _replay_bars
from trader.testing.advanced_trade.faults import Fault, RecordedRequest
from trader.testing.advanced_trade.http import ROUTES, Scope, _Call, _Endpoints, _Route
from trader.testing.advanced_trade.keys import jwt_problem, load_public_key, make_self_signed_cert
from trader.testing.advanced_trade.limits import RequestLimit, rate_limited
from trader.testing.advanced_trade.wire import (
    ZERO,
    Fill,
    FuturesPosition,
    FuturesProduct,
    JsonObject,
    Order,
    PerpPosition,
    _Answer,
    _ApiError,
    _default_products,
    _invalid,
    _not_found,
    _permission_denied,
    _user_order_json,
)

log = logging.getLogger(__name__)

RATE_LIMITED = "rate_limited"  # a RecordedRequest's fault when the server's own limit answered it 429

DEFAULT_PERMISSIONS: Mapping[str, Any] = {
    "can_view": True,
    "can_trade": True,
    "can_transfer": False,
    "portfolio_type": "DEFAULT",
}


class _HTTPSServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose connections are TLS (handshake in the handler thread) and closable on stop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, owner: AdvancedTradeServer) -> None:
        self.context = context
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, address = self.socket.accept()
        connection = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with self._connections_lock:
            self._connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Drop every open connection, waking handler threads that wait on keep-alive reads."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # TLS handshakes refused, clients gone: routine for a test server
            return
        super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is dropped after this many seconds
    server_version = "AdvancedTradeTestServer/1"
    sys_version = ""

    def setup(self) -> None:
        connection = cast(ssl.SSLSocket, self.request)
        # Headers and body go out as two writes: without this, Nagle + delayed ACK add ~40 ms per answer.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.settimeout(self.timeout)
        connection.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        cast(_HTTPSServer, self.server).owner._handle(self)

    def do_POST(self) -> None:
        cast(_HTTPSServer, self.server).owner._handle(self)

    def do_PUT(self) -> None:
        cast(_HTTPSServer, self.server).owner._handle(self)

    def do_DELETE(self) -> None:
        cast(_HTTPSServer, self.server).owner._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `server.requests` instead (and headers are never logged)."""


# --------------------------------------------------------------------------------------------------- the server


class AdvancedTradeServer(_Endpoints):
    """An in-process HTTPS Coinbase Advanced Trade v3 server; see the module docstring.

    State lives behind one lock; the properties and helpers below are safe to call from tests while the SDK talks
    to the server from other threads.
    """

    def __init__(
        self,
        *,
        key_name: str,
        public_key_pem: bytes | str,
        cert_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        balances: Mapping[str, Decimal | str | int] | None = None,
        permissions: Mapping[str, Any] | None = None,
        derivatives: bool = False,
        maker_fee_rate: Decimal = Decimal("0.004"),
        taker_fee_rate: Decimal = Decimal("0.006"),
        rate_limit_rps: float | None = None,
        public_rate_limit_rps: float | None = None,
    ) -> None:
        self.key_name = key_name
        # Off unless set (tests that are not about limits are not slowed): Coinbase's are 30 and 10 per second.
        self.rate_limit = RequestLimit(rate_limit_rps) if rate_limit_rps else None
        self.public_rate_limit = RequestLimit(public_rate_limit_rps) if public_rate_limit_rps else None
        self.public_key_pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        self._public_key = load_public_key(public_key_pem)
        self._keys = {key_name: self._public_key}  # key name -> public key: add_key / revoke_key
        self._host, self._port = host, port
        self.cert_file, self.key_file = make_self_signed_cert(Path(cert_dir))
        self.permissions = {**DEFAULT_PERMISSIONS, **(permissions or {})}
        self.derivatives = derivatives
        self.clock_offset_seconds = 0.0
        self.user_id = str(uuid.uuid4())
        self.portfolio_uuid = str(uuid.uuid4())
        self.intx_portfolio_uuid = str(uuid.uuid4())
        start_balances = {"USD": Decimal("100000"), "BTC": ZERO, "ETH": ZERO} if balances is None else balances
        self._lock = threading.RLock()
        self._exchange = _Exchange(
            {currency: Decimal(str(amount)) for currency, amount in start_balances.items()},
            _replay_bars(list(_default_products())),
            Decimal(maker_fee_rate),
            Decimal(taker_fee_rate),
        )
        self._perp_positions: dict[str, PerpPosition] = {}
        self._perp_collateral: dict[str, Decimal] = {"USDC": ZERO}
        self._futures_positions: dict[str, FuturesPosition] = {}
        self._futures_cash = ZERO  # the CFM futures account's USD balance
        self._futures_products: dict[str, FuturesProduct] = {}
        self._faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._httpd: _HTTPSServer | None = None
        self._thread: threading.Thread | None = None
        self._price_listeners: list[Callable[[str, Decimal, Decimal], object]] = []
        self._order_listeners: list[Callable[[list[JsonObject]], object]] = []
        self._publish_lock = threading.Lock()  # order updates leave in the order they were made

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> AdvancedTradeServer:
        if self._httpd is not None:
            raise RuntimeError("the server is already started")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        self._stopping.clear()
        self._httpd = _HTTPSServer((self._host, self._port), context, self)
        self._port = int(self._httpd.socket.getsockname()[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="advanced-trade-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; returns promptly, also while a handler hangs in an injected timeout."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> AdvancedTradeServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """host:port, what RESTClient(base_url=...) takes (and what JWT uri claims must name)."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return f"{self._host}:{self._port}"

    @property
    def ca_file(self) -> Path:
        """The self-signed certificate to trust: `client.session.verify = str(server.ca_file)`."""
        return self.cert_file

    def now(self) -> datetime:
        """The server clock: real time shifted by `clock_offset_seconds`."""
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_seconds)

    # ---------------------------------------------------------------- test controls

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def orders(self) -> dict[str, Order]:
        """Snapshots of every order by order_id."""
        with self._lock:
            self._exchange.expire(self.now())
            return copy.deepcopy(self._exchange.orders)

    @property
    def fills(self) -> list[Fill]:
        with self._lock:
            return list(self._exchange.fills)

    def balance(self, currency: str) -> tuple[Decimal, Decimal]:
        """(available, hold) of `currency`."""
        with self._lock:
            self._exchange.expire(self.now())
            return self._exchange.available.get(currency, ZERO), self._exchange.held.get(currency, ZERO)

    def set_balance(self, currency: str, available: Decimal | str | int) -> None:
        """Set the available balance of `currency` (holds are untouched)."""
        with self._lock:
            exchange = self._exchange
            exchange.credit(currency, Decimal(str(available)) - exchange.available.get(currency, ZERO))

    def quote(self, product_id: str) -> tuple[Decimal, Decimal]:
        """The current (best bid, best ask)."""
        with self._lock:
            return self._exchange.quotes[self._spec(product_id).product_id]

    def set_price(self, product_id: str, bid: Decimal | str, ask: Decimal | str) -> None:
        """Move the touch: triggers stop orders on the new mid and fills crossed resting limit orders as maker."""
        best_bid, best_ask = Decimal(str(bid)), Decimal(str(ask))
        if not 0 < best_bid < best_ask:
            raise ValueError(f"need 0 < bid < ask, got bid {bid} ask {ask}")
        with self._lock:
            self._spec(product_id)
            self._exchange.set_price(product_id, best_bid, best_ask, self.now())
        for listener in list(self._price_listeners):
            listener(product_id, best_bid, best_ask)
        self._publish_orders()

    def on_price(self, listener: Callable[[str, Decimal, Decimal], object]) -> None:
        """Call `listener(product_id, bid, ask)` after every set_price (the WebSocket test server's ticker)."""
        self._price_listeners.append(listener)

    def on_orders(self, listener: Callable[[list[JsonObject]], object]) -> None:
        """Call `listener(orders)` with the user-channel JSON of the orders that changed, after every request, price
        move and fill_order that changed any (the WebSocket test server's `user` channel: WsTestServer.orders)."""
        self._order_listeners.append(listener)

    def open_user_orders(self) -> list[JsonObject]:
        """The open orders as the user channel's snapshot lists them, oldest first."""
        with self._lock:
            orders = sorted((o for o in self._exchange.orders.values() if o.is_open), key=lambda o: o.sequence)
            return [_user_order_json(o, self.portfolio_uuid) for o in orders]

    def _publish_orders(self) -> None:
        with self._publish_lock:
            with self._lock:
                exchange = self._exchange
                if not exchange.changed:
                    return
                changed = [exchange.orders[order_id] for order_id in exchange.changed]
                exchange.changed.clear()
                if not self._order_listeners:
                    return
                payload = [_user_order_json(order, self.portfolio_uuid) for order in changed]
            for listener in list(self._order_listeners):
                listener(payload)

    def set_product_status(self, product_id: str, **flags: bool) -> None:
        """Set trading_disabled, cancel_only, limit_only or post_only on a product."""
        with self._lock:
            spec = self._spec(product_id)
            for name, value in flags.items():
                if name not in ("trading_disabled", "cancel_only", "limit_only", "post_only"):
                    raise ValueError(f"unknown product flag {name}")
                setattr(spec, name, value)

    def fill_order(self, order_id: str, size: Decimal | str | None = None, price: Decimal | str | None = None) -> Fill:
        """Fill a resting limit order as maker: `size` (default: all that remains) at `price` (default: its limit)."""
        with self._lock:
            exchange = self._exchange
            exchange.expire(self.now())
            order = exchange.orders.get(order_id)
            if order is None or not order.is_open or order.stop_pending or order.limit_price is None:
                raise ValueError(f"order {order_id} is not a resting limit order")
            amount = order.remaining if size is None else Decimal(str(size))
            if not 0 < amount <= order.remaining:
                raise ValueError(f"fill size {amount} is outside (0, {order.remaining}]")
            at = order.limit_price if price is None else Decimal(str(price))
            fill = exchange.execute(order, amount, at, "MAKER", self.now())
        self._publish_orders()
        return fill

    def cancel_order(self, order_id: str) -> None:
        """Cancel an open order as another client would (the Coinbase UI): the user channel reports it."""
        with self._lock:
            order = self._exchange.orders.get(order_id)
            if order is None or not order.is_open:
                raise ValueError(f"order {order_id} is not open")
            self._exchange.close(order, "CANCELLED", "User requested cancel")
        self._publish_orders()

    def add_perp_position(
        self,
        symbol: str,
        net_size: Decimal | str,
        entry_vwap: Decimal | str,
        mark_price: Decimal | str | None = None,
        leverage: Decimal | str = "1",
        margin_type: str = "MARGIN_TYPE_CROSS",
    ) -> PerpPosition | None:
        """Set the INTX position in `symbol` (e.g. "BTC-PERP-INTX"; negative size is short); size 0 removes it."""
        size = Decimal(str(net_size))
        with self._lock:
            if size == 0:
                self._perp_positions.pop(symbol, None)
                return None
            entry = Decimal(str(entry_vwap))
            mark = entry if mark_price is None else Decimal(str(mark_price))
            position = PerpPosition(symbol, size, entry, mark, Decimal(str(leverage)), margin_type)
            self._perp_positions[symbol] = position
            return position

    def add_futures_position(
        self,
        product_id: str,
        side: str,
        contracts: Decimal | str,
        avg_entry_price: Decimal | str,
        current_price: Decimal | str | None = None,
        *,
        contract_size: Decimal | str = "0.01",
        daily_realized_pnl: Decimal | str = "0",
    ) -> FuturesPosition | None:
        """Set the CFM futures position in `product_id` (side LONG or SHORT); 0 contracts removes it."""
        if side not in ("LONG", "SHORT"):
            raise ValueError(f"side must be LONG or SHORT, got {side!r}")
        count = Decimal(str(contracts))
        with self._lock:
            if count == 0:
                self._futures_positions.pop(product_id, None)
                return None
            entry = Decimal(str(avg_entry_price))
            current = entry if current_price is None else Decimal(str(current_price))
            position = FuturesPosition(
                product_id, side, count, entry, current, Decimal(str(contract_size)), Decimal(str(daily_realized_pnl))
            )
            self._futures_positions[product_id] = position
            return position

    def set_futures_product(
        self,
        product_id: str,
        *,
        price: Decimal | str,
        funding_rate: Decimal | str,
        contract_size: Decimal | str = "0.01",
        max_leverage: Decimal | str = "10",
        funding_time: datetime | None = None,
    ) -> None:
        """List (or update) a perpetual-style future with this price and funding rate; funding is hourly, next at
        the coming hour unless `funding_time` says otherwise."""
        next_hour = funding_time or self.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        with self._lock:
            self._futures_products[product_id] = FuturesProduct(
                product_id,
                Decimal(str(price)),
                Decimal(str(funding_rate)),
                next_hour,
                Decimal(str(contract_size)),
                Decimal(str(max_leverage)),
            )

    def set_futures_cash(self, amount: Decimal | str) -> None:
        """The CFM futures account's USD balance."""
        with self._lock:
            self._futures_cash = Decimal(str(amount))

    def set_perp_collateral(self, quantity: Decimal | str, asset: str = "USDC") -> None:
        with self._lock:
            self._perp_collateral[asset] = Decimal(str(quantity))

    # ---------------------------------------------------------------- request pipeline

    def _handle(self, handler: _RequestHandler) -> None:
        method = handler.command
        split = urlsplit(handler.path)
        call = _Call(method, split.path, parse_qs(split.query, keep_blank_values=True), {})
        body_error: _ApiError | None = None
        try:
            body = self._read_body(handler)
        except _ApiError as error:
            body, body_error = None, error
        if body is not None:
            call = replace(call, body=body)
        admitted, limit_headers = self._admit(call, handler.client_address[0])
        with self._lock:
            fault = next((f for f in self._faults if f.matches(method, call.path)), None) if admitted else None
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            recorded = None if method == "GET" else copy.deepcopy(body)
            kind = fault.kind if fault is not None else None if admitted else RATE_LIMITED
            self._requests.append(RecordedRequest(method, call.path, call.query, recorded, kind, time.time()))
        authorization = handler.headers.get("Authorization")
        if not admitted:
            answer: _Answer | None = rate_limited(limit_headers)
        else:
            answer = self._answer(call, authorization, body_error, fault)
            if answer is not None:
                answer.headers.update(limit_headers)
        if answer is None:  # the server is stopping during a hang: drop the connection unanswered
            handler.close_connection = True
            return
        data = answer.encode()
        try:
            handler.send_response(answer.status)
            handler.send_header("Content-Type", "application/json; charset=utf-8")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up (e.g. timed out during an injected hang)
            handler.close_connection = True

    def _admit(self, call: _Call, client_ip: str) -> tuple[bool, dict[str, str]]:
        """Coinbase's limits, when set: public endpoints per client IP, the rest per API key (limits.py)."""
        if self.rate_limit is None and self.public_rate_limit is None:
            return True, {}
        route, _ = self._find_route(call.method, call.path)
        public = route is not None and route.scope == "public"
        limit = self.public_rate_limit if public else self.rate_limit
        if limit is None:
            return True, {}
        return limit.admit(client_ip if public else self.key_name, time.time())

    @property
    def rate_limited_count(self) -> int:
        """Requests answered 429 by the server's own limits (injected 429 faults are not counted)."""
        return sum(limit.refused for limit in (self.rate_limit, self.public_rate_limit) if limit is not None)

    @staticmethod
    def _read_body(handler: _RequestHandler) -> JsonObject | None:
        try:
            length = int(handler.headers.get("Content-Length") or 0)
        except ValueError:
            raise _invalid("Content-Length is not a number") from None
        if length <= 0:
            return None
        raw = handler.rfile.read(length)
        try:
            data = json.loads(raw)
        except ValueError:
            raise _invalid("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _invalid("the request body must be a JSON object")
        return data

    def _answer(
        self, call: _Call, authorization: str | None, body_error: _ApiError | None, fault: Fault | None
    ) -> _Answer | None:
        """The answer to send, or None when the server stopped while the answer hung."""

        def serve() -> _Answer:
            if body_error is not None:
                return _Answer(body_error.status, body_error.body())
            return self._serve(call, authorization)

        if fault is None:
            return serve()
        if fault.kind == "timeout":
            if fault.process:
                answer = serve()
                return None if self._stopping.wait(fault.delay) else answer
            return None if self._stopping.wait(fault.delay) else serve()
        return fault.answer(serve() if fault.process else None, call.path)

    def _serve(self, call: _Call, authorization: str | None) -> _Answer:
        route, params = self._find_route(call.method, call.path)
        if route is None:
            error = _not_found(f"no such endpoint: {call.method} {call.path}")
            return _Answer(error.status, error.body())
        try:
            if route.scope != "public":
                self._authenticate(call, authorization)
                self._authorize(route.scope)
            with self._lock:
                self._exchange.expire(self.now())
                payload = route.handler(self, replace(call, params=params))
        except _ApiError as error:
            return _Answer(error.status, error.body())
        except Exception:
            log.exception("advanced trade test server: %s %s failed", call.method, call.path)
            return _Answer(500, {"error": "INTERNAL", "error_details": "", "message": "Internal server error"})
        finally:
            self._publish_orders()
        return _Answer(200, payload)

    @staticmethod
    def _find_route(method: str, path: str) -> tuple[_Route | None, dict[str, str]]:
        for route in ROUTES:
            match = route.pattern.fullmatch(path)
            if match and route.method == method:
                return route, match.groupdict()
        return None, {}

    def _authenticate(self, call: _Call, authorization: str | None) -> None:
        problem = self._jwt_problem(call, authorization)
        if problem is not None:
            raise _ApiError(401, "UNAUTHENTICATED", "unauthorized", problem)

    def _jwt_problem(self, call: _Call, authorization: str | None) -> str | None:
        """Why the request's JWT is not acceptable, or None when it is."""
        uri = f"{call.method} {self._host}:{self._port}{call.path}"
        kid = _kid(authorization)
        key = self._keys.get(kid) if kid is not None else None
        if key is None:
            return "jwt kid is not a known key"
        return jwt_problem(authorization, key, kid or "", uri, self.now().timestamp())

    def add_key(self, key_name: str, public_key_pem: bytes | str) -> None:
        """Accept another CDP key on this account (a backup key for rotation)."""
        with self._lock:
            self._keys[key_name] = load_public_key(public_key_pem)

    def revoke_key(self, key_name: str) -> None:
        """Stop accepting a key (a compromised one): its requests are 401 from now on."""
        with self._lock:
            self._keys.pop(key_name, None)

    def _authorize(self, scope: Scope) -> None:
        if scope == "view" and not self.permissions.get("can_view"):
            raise _permission_denied("Missing required scopes")
        if scope == "trade" and not self.permissions.get("can_trade"):
            raise _permission_denied("Missing required scopes")


def _kid(authorization: str | None) -> str | None:
    """The key name a bearer JWT names in its header (unverified: the signature check follows with that key)."""
    import jwt

    if not authorization or not authorization.startswith("Bearer "):
        return None
    try:
        kid = jwt.get_unverified_header(authorization.removeprefix("Bearer ").strip()).get("kid")
    except jwt.InvalidTokenError:
        return None
    return str(kid) if kid else None
