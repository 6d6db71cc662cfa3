"""A local HTTPS server that speaks the Coinbase Advanced Trade v3 REST API, for tests that drive the real SDK.

`AdvancedTradeServer` answers `/api/v3/brokerage/...` with Coinbase's documented request and response JSON over TLS
on loopback, so an unmodified `coinbase.rest.RESTClient` talks to it:

    key = generate_cdp_key("organizations/test/apiKeys/local")
    with AdvancedTradeServer(key_name=key.name, public_key_pem=key.public_key_pem, cert_dir=tmp_path) as server:
        client = RESTClient(api_key=key.name, api_secret=key.private_key_pem, base_url=server.base_url, timeout=5)
        client.session.verify = str(server.ca_file)
        client.market_order_buy(client_order_id="c-1", product_id="BTC-USD", quote_size="100")

What it models:

* Auth like Coinbase: every private request carries an ES256 JWT (kid == sub == key name, iss "cdp", nbf/exp, and
  uri "METHOD host:port/path"); anything else is a 401 UNAUTHENTICATED. `/time` and `/market/...` are public.
* A spot exchange with BTC-USD and ETH-USD priced from the bundled replay candles (the last 1000 one-minute bars,
  re-timed on every request so the last closed bar ended at the start of the current minute; the still-open bar is
  included, as Coinbase does). Balances, holds, maker/taker fees (charged in the quote currency), resting limit
  orders, stop-limit triggers (on the mid price), GTD expiry (checked lazily on every request), edits and cancels.
  Every execution fills completely at one price: market and crossing limit orders at the touch as taker (buys at
  the ask, sells at the bid); resting limit orders at their own limit price as maker, when `set_price` moves the
  touch through them or a test calls `fill_order`.
* Per-request fault injection (`Fault`): 429 with Retry-After, 500, 503, a hang (optionally after the request took
  effect, so a client time-out hides a created order), a truncated JSON body, or any canned error.
* Optional INTX perpetuals read endpoints (`derivatives=True`) fed by `add_perp_position`.

Operators and subprocess tests run it standalone: `python -m trader.testing.advanced_trade_server --state-dir DIR
[--port N]` writes DIR/cdp_key.json and DIR/cert.pem, then DIR/server.json {"base_url", "ca_file", "key_file"} once
listening, and serves until SIGTERM or SIGINT. The Authorization header and key material are never logged or kept.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ipaddress
import itertools
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, TypeVar, cast, get_args
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trader.domain import Candle, quantize_down
from trader.market import ReplayMarketData

log = logging.getLogger(__name__)

API = "/api/v3/brokerage"
JsonObject = dict[str, Any]
ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)
T = TypeVar("T")

HISTORY_BARS = 1000  # one-minute replay bars the server serves as history
MAX_CANDLES = 350  # Coinbase's cap on candles per request
GRANULARITIES = {
    "ONE_MINUTE": 60,
    "FIVE_MINUTE": 300,
    "FIFTEEN_MINUTE": 900,
    "THIRTY_MINUTE": 1800,
    "ONE_HOUR": 3600,
    "TWO_HOUR": 7200,
    "SIX_HOUR": 21600,
    "ONE_DAY": 86400,
}
MAX_CANCEL_IDS = 100  # batch_cancel refuses more ids than this, cancelling nothing
ACCOUNTS_DEFAULT_LIMIT, ACCOUNTS_MAX_LIMIT = 49, 250
ORDERS_DEFAULT_LIMIT, ORDERS_MAX_LIMIT = 100, 1000
FILLS_DEFAULT_LIMIT, FILLS_MAX_LIMIT = 100, 1000
HALF_SPREAD = Decimal("0.00005")  # half of a 1 bps spread around the last close
JWT_CLOCK_SKEW = 5  # seconds a token's nbf may be ahead of the server clock
USD_PEGGED = frozenset({"USD", "USDC", "USDT", "DAI"})
FIAT = frozenset({"USD", "EUR", "GBP"})
CURRENCY_NAMES = {"USD": "US Dollar", "BTC": "Bitcoin", "ETH": "Ethereum", "USDC": "USDC", "SOL": "Solana"}
DEFAULT_PERMISSIONS: Mapping[str, Any] = {
    "can_view": True,
    "can_trade": True,
    "can_transfer": False,
    "portfolio_type": "DEFAULT",
}
STOP_UP, STOP_DOWN = "STOP_DIRECTION_STOP_UP", "STOP_DIRECTION_STOP_DOWN"
INSUFFICIENT_FUND_MESSAGE = "Insufficient balance in source account"


# --------------------------------------------------------------------------------------------------- small helpers


def _fmt(value: Decimal) -> str:
    """An amount as Coinbase renders it: a plain decimal string without trailing zeros."""
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _money(value: Decimal, currency: str) -> JsonObject:
    return {"value": _fmt(value), "currency": currency}


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(f"{name} is not an RFC3339 timestamp: {text!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _decimal(value: Any, name: str) -> Decimal:
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise _invalid(f"{name} is not a decimal number: {value!r}") from None
    if not result.is_finite():
        raise _invalid(f"{name} is not a finite number: {value!r}")
    return result


def _on_increment(value: Decimal, increment: Decimal) -> bool:
    return value % increment == 0


def _quantize_up(value: Decimal, increment: Decimal) -> Decimal:
    """Round value up to a whole multiple of increment."""
    return (value / increment).to_integral_value(rounding=ROUND_CEILING) * increment


def _compact_json(payload: Any) -> str:
    """JSON without spaces, as Coinbase sends it (the SDK matches '"error_details":"Missing required scopes"')."""
    return json.dumps(payload, separators=(",", ":"))


def _seconds(value: float) -> str:
    """Seconds as a Retry-After value: "2", "0.2"."""
    return format(Decimal(str(value)).normalize(), "f")


# --------------------------------------------------------------------------------------------------- errors


class _ApiError(Exception):
    """An HTTP error answer in Coinbase's shape: {"error", "error_details", "message"}."""

    def __init__(self, status: int, error: str, message: str, details: str = "") -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.details = details

    def body(self) -> JsonObject:
        return {"error": self.error, "error_details": self.details, "message": self.message}


def _invalid(message: str) -> _ApiError:
    return _ApiError(400, "INVALID_ARGUMENT", message, message)


def _not_found(message: str) -> _ApiError:
    return _ApiError(404, "NOT_FOUND", message, message)


def _permission_denied(details: str) -> _ApiError:
    return _ApiError(403, "PERMISSION_DENIED", details, details)


class _Rejected(Exception):
    """A new order that breaks a trading rule: Coinbase answers HTTP 200 with success=false and these reasons."""

    def __init__(self, error: str, preview: str, message: str) -> None:
        super().__init__(message)
        self.error = error  # NewOrderFailureReason, e.g. INSUFFICIENT_FUND
        self.preview = preview  # PreviewFailureReason, e.g. PREVIEW_INSUFFICIENT_FUND
        self.message = message


# --------------------------------------------------------------------------------------------------- keys and TLS


@dataclass(frozen=True)
class CdpKey:
    """A CDP API key shaped like the ones Coinbase issues: a key name and an EC P-256 private key in SEC1 PEM."""

    name: str
    private_key_pem: str = field(repr=False)
    public_key_pem: bytes = field(repr=False)

    def write_key_file(self, path: Path) -> Path:
        """Write the CDP JSON key file {"name", "privateKey"}, readable by the owner only (mode 0600)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"name": self.name, "privateKey": self.private_key_pem}, indent=2) + "\n"
        _write_private(target, text.encode("utf-8"))
        return target


def generate_cdp_key(name: str) -> CdpKey:
    """A fresh key pair for `name`; the private key is "-----BEGIN EC PRIVATE KEY-----" PEM, as CDP hands out."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode("ascii")
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CdpKey(name=name, private_key_pem=private_pem, public_key_pem=public_pem)


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write cert.pem and cert-key.pem for 127.0.0.1 and localhost, valid from a day ago for 30 days.

    The certificate is its own CA (BasicConstraints ca=True), so a client trusts the server with
    `session.verify = cert_path`.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trader Advanced Trade test server"),
        ]
    )
    now = datetime.now(UTC)
    subject_key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    alt_names = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(alt_names, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(subject_key_id, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(subject_key_id), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "cert-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_bytes)
    return cert_path, key_path


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


# --------------------------------------------------------------------------------------------------- faults, records

FaultKind = Literal["429", "500", "503", "timeout", "malformed", "error"]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))


@dataclass
class Fault:
    """A misbehaviour served to the next `times` requests whose method matches and whose path starts with `path`.

    Kinds: "429" (RATE_LIMIT_EXCEEDED with a Retry-After header of `retry_after` seconds), "500" and "503" (JSON
    error bodies), "timeout" (hang `delay` seconds, then answer normally), "malformed" (HTTP 200 with a truncated
    JSON body), "error" (`status` with `body`). With `process=True` the request takes effect first (an order is
    created, a cancel happens): a timeout then hangs before the real answer, the other kinds replace it.
    """

    kind: FaultKind
    method: str | None = None  # None matches every method
    path: str = "/"  # a prefix of the request path, e.g. "/api/v3/brokerage/orders"
    times: int = 1
    retry_after: float = 1.0
    delay: float = 5.0
    process: bool = False
    status: int = 400
    body: JsonObject | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(sorted(FAULT_KINDS))}")

    def matches(self, method: str, path: str) -> bool:
        method_ok = self.method is None or self.method.upper() == method
        return self.times > 0 and method_ok and path.startswith(self.path)

    def answer(self, processed: _Answer | None, path: str) -> _Answer:
        """The answer this fault gives instead of `processed` (the real answer when the request was processed)."""
        if self.kind == "429":
            body = {"error": "RATE_LIMIT_EXCEEDED", "error_details": "", "message": "Too many requests"}
            return _Answer(429, body, headers={"Retry-After": _seconds(self.retry_after)})
        if self.kind == "500":
            return _Answer(500, {"error": "INTERNAL", "error_details": "", "message": "Internal server error"})
        if self.kind == "503":
            return _Answer(503, {"error": "UNAVAILABLE", "error_details": "", "message": "Service unavailable"})
        if self.kind == "malformed":
            if processed is not None:
                text = _compact_json(processed.payload)
                return _Answer(200, raw=text[: max(1, len(text) // 2)].encode("utf-8"))
            resource = path.rstrip("/").rsplit("/", 1)[-1] or "data"
            return _Answer(200, raw=f'{{"{resource}": ['.encode())
        body = self.body if self.body is not None else {"error": "INVALID_ARGUMENT", "message": "injected error"}
        return _Answer(self.status, body)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (headers are never kept); `fault` is the kind served instead, if any."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: JsonObject | None
    fault: str | None


@dataclass
class _Answer:
    status: int
    payload: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return self.raw if self.raw is not None else _compact_json(self.payload).encode("utf-8")


# --------------------------------------------------------------------------------------------------- exchange model


@dataclass
class ProductSpec:
    """A spot product's trading rules and status flags."""

    product_id: str
    base_currency: str
    quote_currency: str
    base_increment: Decimal
    quote_increment: Decimal
    base_min_size: Decimal
    base_max_size: Decimal
    quote_min_size: Decimal
    quote_max_size: Decimal
    trading_disabled: bool = False
    cancel_only: bool = False
    limit_only: bool = False
    post_only: bool = False


def _default_products() -> dict[str, ProductSpec]:
    satoshi, cent = Decimal("0.00000001"), Decimal("0.01")
    quote_min, quote_max = Decimal("1"), Decimal("150000000")
    return {
        "BTC-USD": ProductSpec("BTC-USD", "BTC", "USD", satoshi, cent, satoshi, Decimal("3400"), quote_min, quote_max),
        "ETH-USD": ProductSpec("ETH-USD", "ETH", "USD", satoshi, cent, satoshi, Decimal("38000"), quote_min, quote_max),
    }


@dataclass(frozen=True)
class _ConfigSpec:
    """One order_configuration variant: its order type, time in force, fields and required fields."""

    order_type: str
    time_in_force: str
    fields: tuple[str, ...]
    required: tuple[str, ...]


ORDER_CONFIGS: Mapping[str, _ConfigSpec] = {
    "market_market_ioc": _ConfigSpec("MARKET", "IMMEDIATE_OR_CANCEL", ("quote_size", "base_size"), ()),
    "sor_limit_ioc": _ConfigSpec(
        "LIMIT", "IMMEDIATE_OR_CANCEL", ("base_size", "limit_price"), ("base_size", "limit_price")
    ),
    "limit_limit_fok": _ConfigSpec("LIMIT", "FILL_OR_KILL", ("base_size", "limit_price"), ("base_size", "limit_price")),
    "limit_limit_gtc": _ConfigSpec(
        "LIMIT", "GOOD_UNTIL_CANCELLED", ("base_size", "limit_price", "post_only"), ("base_size", "limit_price")
    ),
    "limit_limit_gtd": _ConfigSpec(
        "LIMIT",
        "GOOD_UNTIL_DATE_TIME",
        ("base_size", "limit_price", "end_time", "post_only"),
        ("base_size", "limit_price", "end_time"),
    ),
    "stop_limit_stop_limit_gtc": _ConfigSpec(
        "STOP_LIMIT",
        "GOOD_UNTIL_CANCELLED",
        ("base_size", "limit_price", "stop_price", "stop_direction"),
        ("base_size", "limit_price", "stop_price", "stop_direction"),
    ),
    "stop_limit_stop_limit_gtd": _ConfigSpec(
        "STOP_LIMIT",
        "GOOD_UNTIL_DATE_TIME",
        ("base_size", "limit_price", "stop_price", "end_time", "stop_direction"),
        ("base_size", "limit_price", "stop_price", "end_time", "stop_direction"),
    ),
}
IMMEDIATE = frozenset({"IMMEDIATE_OR_CANCEL", "FILL_OR_KILL"})


@dataclass(frozen=True)
class _OrderRequest:
    """A parsed POST /orders (or /orders/preview) body."""

    client_order_id: str
    product_id: str
    side: str
    kind: str
    configuration: JsonObject
    base_size: Decimal | None = None
    quote_size: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    stop_direction: str | None = None
    end_time: datetime | None = None
    post_only: bool = False

    @property
    def spec(self) -> _ConfigSpec:
        return ORDER_CONFIGS[self.kind]


@dataclass
class Order:
    """An order as the exchange keeps it (`server.orders`); rendered as Coinbase's order JSON by the server."""

    order_id: str
    client_order_id: str
    product_id: str
    side: str
    kind: str  # the order_configuration key, e.g. "limit_limit_gtc"
    configuration: JsonObject  # the order_configuration fields, kept current by edits
    created_time: datetime
    sequence: int
    base_size: Decimal | None = None
    quote_size: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    stop_direction: str | None = None
    end_time: datetime | None = None
    post_only: bool = False
    status: str = "OPEN"
    trigger_status: str = "INVALID_ORDER_TYPE"
    filled_size: Decimal = ZERO
    filled_value: Decimal = ZERO
    total_fees: Decimal = ZERO
    number_of_fills: int = 0
    last_fill_time: datetime | None = None
    hold: Decimal = ZERO
    hold_currency: str = ""
    cancel_message: str = ""
    edit_history: list[JsonObject] = field(default_factory=list)

    @property
    def order_type(self) -> str:
        return ORDER_CONFIGS[self.kind].order_type

    @property
    def time_in_force(self) -> str:
        return ORDER_CONFIGS[self.kind].time_in_force

    @property
    def is_open(self) -> bool:
        return self.status == "OPEN"

    @property
    def stop_pending(self) -> bool:
        return self.trigger_status == "STOP_PENDING"

    @property
    def remaining(self) -> Decimal:
        return self.base_size - self.filled_size if self.base_size is not None else ZERO

    @property
    def average_filled_price(self) -> Decimal:
        return self.filled_value / self.filled_size if self.filled_size else ZERO


@dataclass(frozen=True)
class Fill:
    """One execution (`server.fills`); commission is in the product's quote currency."""

    entry_id: str
    trade_id: str
    order_id: str
    product_id: str
    side: str
    price: Decimal
    size: Decimal
    commission: Decimal
    liquidity_indicator: str  # "MAKER" or "TAKER"
    trade_time: datetime
    size_in_quote: bool
    sequence: int


@dataclass
class PerpPosition:
    """An INTX perpetual position served by the /intx endpoints (see `AdvancedTradeServer.add_perp_position`)."""

    symbol: str
    net_size: Decimal
    entry_vwap: Decimal
    mark_price: Decimal
    leverage: Decimal
    margin_type: str = "MARGIN_TYPE_CROSS"
    product_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def notional(self) -> Decimal:
        return abs(self.net_size) * self.mark_price

    @property
    def unrealized_pnl(self) -> Decimal:
        return (self.mark_price - self.entry_vwap) * self.net_size


class _Exchange:
    """Products, quotes, balances, orders and fills; every method expects the server's lock to be held."""

    def __init__(
        self,
        balances: Mapping[str, Decimal],
        bars: Mapping[str, list[Candle]],
        maker_fee_rate: Decimal,
        taker_fee_rate: Decimal,
    ) -> None:
        self.products = _default_products()
        self.bars = {product_id: bars[product_id] for product_id in self.products}
        self.maker_fee_rate = maker_fee_rate
        self.taker_fee_rate = taker_fee_rate
        self.hold_fee_rate = max(maker_fee_rate, taker_fee_rate)
        self.quotes: dict[str, tuple[Decimal, Decimal]] = {}
        for product_id, spec in self.products.items():
            close = self.bars[product_id][-1].close
            bid = quantize_down(close * (ONE - HALF_SPREAD), spec.quote_increment)
            ask = max(_quantize_up(close * (ONE + HALF_SPREAD), spec.quote_increment), bid + spec.quote_increment)
            self.quotes[product_id] = (bid, ask)
        currencies = [*balances, *(c for p in self.products.values() for c in (p.base_currency, p.quote_currency))]
        self.available: dict[str, Decimal] = {c: Decimal(balances.get(c, ZERO)) for c in dict.fromkeys(currencies)}
        self.held: dict[str, Decimal] = dict.fromkeys(self.available, ZERO)
        self.account_ids = {currency: str(uuid.uuid4()) for currency in self.available}
        self.cost_basis = {c: amount * self.usd_price(c) for c, amount in self.available.items()}
        self.orders: dict[str, Order] = {}
        self.client_ids: dict[str, str] = {}
        self.fills: list[Fill] = []
        self.volume = ZERO
        self.fees_paid = ZERO
        self._sequence = itertools.count(1)

    # ---------------------------------------------------------------- market data

    def mid(self, product_id: str) -> Decimal:
        bid, ask = self.quotes[product_id]
        return (bid + ask) / 2

    def price(self, product_id: str) -> Decimal:
        """The product's "last price": the mid, on the quote increment."""
        return quantize_down(self.mid(product_id), self.products[product_id].quote_increment)

    def usd_price(self, currency: str) -> Decimal:
        if currency in USD_PEGGED:
            return ONE
        product_id = f"{currency}-USD"
        return self.mid(product_id) if product_id in self.quotes else ZERO

    def minute_bars(self, product_id: str, now: datetime) -> list[Candle]:
        """The recorded bars re-timed to end at the current minute, plus the still-open bar at the current mid."""
        bars = self.bars[product_id]
        minute = int(now.timestamp()) // 60 * 60
        shift = timedelta(seconds=minute - 60 - int(bars[-1].start.timestamp()))
        closed = [replace(bar, start=bar.start + shift) for bar in bars]
        last, mid = bars[-1].close, self.price(product_id)
        current = Candle(datetime.fromtimestamp(minute, tz=UTC), last, max(last, mid), min(last, mid), mid, ZERO)
        return [*closed, current]

    def set_price(self, product_id: str, bid: Decimal, ask: Decimal, now: datetime) -> None:
        self.quotes[product_id] = (bid, ask)
        self.expire(now)
        mid = self.mid(product_id)
        for order in self._open_orders(product_id):
            if order.stop_pending and self._stop_hit(order, mid):
                order.trigger_status = "STOP_TRIGGERED"
                self._match(order, now)
        for order in self._open_orders(product_id):
            if not order.stop_pending and order.limit_price is not None and self._crosses(order):
                self.execute(order, order.remaining, order.limit_price, "MAKER", now)

    # ---------------------------------------------------------------- balances

    def total(self, currency: str) -> Decimal:
        return self.available.get(currency, ZERO) + self.held.get(currency, ZERO)

    def credit(self, currency: str, amount: Decimal) -> None:
        if currency not in self.available:
            self.available[currency] = ZERO
            self.held[currency] = ZERO
            self.account_ids[currency] = str(uuid.uuid4())
            self.cost_basis[currency] = ZERO
        self.available[currency] += amount

    def _reserve(self, order: Order, currency: str, amount: Decimal) -> None:
        self.available[currency] -= amount
        self.held[currency] += amount
        order.hold, order.hold_currency = amount, currency

    def _release(self, order: Order, amount: Decimal) -> None:
        if amount <= 0 or not order.hold_currency:
            return
        self.held[order.hold_currency] -= amount
        self.available[order.hold_currency] += amount
        order.hold -= amount

    # ---------------------------------------------------------------- order entry

    def check(self, request: _OrderRequest, now: datetime) -> ProductSpec:
        """The product, or _Rejected with Coinbase's failure reasons when the order breaks a rule."""
        spec = self.products.get(request.product_id)
        if spec is None:
            raise _Rejected("INVALID_PRODUCT_ID", "PREVIEW_INVALID_PRODUCT_ID", "Invalid product_id")
        if request.side not in ("BUY", "SELL"):
            raise _Rejected("INVALID_SIDE", "PREVIEW_INVALID_SIDE", "Invalid side")
        if spec.trading_disabled or spec.cancel_only:
            raise _Rejected("ORDER_ENTRY_DISABLED", "PREVIEW_TRADING_DISABLED", "Order entry is disabled")
        market = request.spec.order_type == "MARKET"
        if market and spec.limit_only:
            raise _Rejected("UNSUPPORTED_ORDER_CONFIGURATION", "PREVIEW_INVALID_ORDER_CONFIG", "Limit only mode")
        self._check_precision(request, spec)
        self._check_sizes(request, spec)
        self._check_prices(request, spec, now)
        currency, needed = self.funds_needed(request, spec)
        if needed > self.available.get(currency, ZERO):
            raise _Rejected("INSUFFICIENT_FUND", "PREVIEW_INSUFFICIENT_FUND", INSUFFICIENT_FUND_MESSAGE)
        return spec

    @staticmethod
    def _check_precision(request: _OrderRequest, spec: ProductSpec) -> None:
        if request.base_size is not None and not _on_increment(request.base_size, spec.base_increment):
            raise _Rejected("INVALID_SIZE_PRECISION", "PREVIEW_INVALID_SIZE_PRECISION", "Too many decimals in size")
        if request.quote_size is not None and not _on_increment(request.quote_size, spec.quote_increment):
            raise _Rejected(
                "INVALID_SIZE_PRECISION", "PREVIEW_INVALID_QUOTE_SIZE_PRECISION", "Too many decimals in quote size"
            )
        for price in (request.limit_price, request.stop_price):
            if price is not None and not _on_increment(price, spec.quote_increment):
                raise _Rejected(
                    "INVALID_PRICE_PRECISION", "PREVIEW_INVALID_PRICE_PRECISION", "Too many decimals in price"
                )

    def _check_sizes(self, request: _OrderRequest, spec: ProductSpec) -> None:
        bid, ask = self.quotes[spec.product_id]
        base, notional = request.base_size, request.quote_size
        if base is None and notional is not None and request.side == "SELL":
            base = quantize_down(notional / bid, spec.base_increment)
        if base is not None:
            if base < spec.base_min_size or base <= 0:
                raise _Rejected("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_BASE_SIZE_TOO_SMALL", "Size too small")
            if base > spec.base_max_size:
                raise _Rejected("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_BASE_SIZE_TOO_LARGE", "Size too large")
        if notional is None and base is not None:
            notional = base * (request.limit_price or (ask if request.side == "BUY" else bid))
        if notional is not None:
            if notional < spec.quote_min_size:
                raise _Rejected("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_QUOTE_SIZE_TOO_SMALL", "Amount too small")
            if notional > spec.quote_max_size:
                raise _Rejected("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_QUOTE_SIZE_TOO_LARGE", "Amount too large")

    def _check_prices(self, request: _OrderRequest, spec: ProductSpec, now: datetime) -> None:
        for price in (request.limit_price, request.stop_price):
            if price is not None and price <= 0:
                raise _Rejected("INVALID_LIMIT_PRICE", "PREVIEW_INVALID_LIMIT_PRICE", "Price must be positive")
        if request.end_time is not None and request.end_time <= now:
            raise _Rejected("INVALID_REQUEST", "PREVIEW_END_TIME_IS_IN_THE_PAST", "end_time is in the past")
        if request.stop_price is not None:
            mid = self.mid(spec.product_id)
            if request.stop_direction == STOP_UP and request.stop_price <= mid:
                raise _Rejected(
                    "INVALID_REQUEST", "PREVIEW_STOP_PRICE_BELOW_LAST_TRADE_PRICE", "Stop price below last price"
                )
            if request.stop_direction == STOP_DOWN and request.stop_price >= mid:
                raise _Rejected(
                    "INVALID_REQUEST", "PREVIEW_STOP_PRICE_ABOVE_LAST_TRADE_PRICE", "Stop price above last price"
                )
        bid, ask = self.quotes[spec.product_id]
        if request.post_only and request.limit_price is not None:
            crosses = request.limit_price >= ask if request.side == "BUY" else request.limit_price <= bid
            if crosses:
                raise _Rejected(
                    "INVALID_LIMIT_PRICE_POST_ONLY",
                    "PREVIEW_INVALID_LIMIT_PRICE_POST_ONLY",
                    "Post-only limit price would take liquidity",
                )

    def funds_needed(self, request: _OrderRequest, spec: ProductSpec) -> tuple[str, Decimal]:
        """The currency and amount the order needs: spent at once (market) or held while it rests."""
        bid, ask = self.quotes[spec.product_id]
        if request.spec.order_type == "MARKET":
            if request.side == "BUY":
                if request.quote_size is not None:
                    return spec.quote_currency, request.quote_size
                return spec.quote_currency, (request.base_size or ZERO) * ask * (ONE + self.taker_fee_rate)
            if request.base_size is not None:
                return spec.base_currency, request.base_size
            return spec.base_currency, quantize_down((request.quote_size or ZERO) / bid, spec.base_increment)
        base, price = request.base_size or ZERO, request.limit_price or ZERO
        if request.side == "BUY":
            return spec.quote_currency, base * price * (ONE + self.hold_fee_rate)
        return spec.base_currency, base

    def place(self, request: _OrderRequest, now: datetime) -> Order:
        spec = self.check(request, now)
        order = Order(
            order_id=str(uuid.uuid4()),
            client_order_id=request.client_order_id,
            product_id=request.product_id,
            side=request.side,
            kind=request.kind,
            configuration=dict(request.configuration),
            created_time=now,
            sequence=next(self._sequence),
            base_size=request.base_size,
            quote_size=request.quote_size,
            limit_price=request.limit_price,
            stop_price=request.stop_price,
            stop_direction=request.stop_direction,
            end_time=request.end_time,
            post_only=request.post_only,
            trigger_status="STOP_PENDING" if request.stop_price is not None else "INVALID_ORDER_TYPE",
        )
        self.orders[order.order_id] = order
        self.client_ids[order.client_order_id] = order.order_id
        if order.order_type == "MARKET":
            self._fill_market(order, spec, now)
            return order
        currency, amount = self.funds_needed(request, spec)
        self._reserve(order, currency, amount)
        if not order.stop_pending:
            self._match(order, now)
        return order

    def _fill_market(self, order: Order, spec: ProductSpec, now: datetime) -> None:
        bid, ask = self.quotes[order.product_id]
        if order.side == "BUY":
            price = ask
            size = order.base_size
            if size is None:  # spend quote_size in total, fee included, as Coinbase does for quote-sized buys
                budget = order.quote_size or ZERO
                size = quantize_down(budget / (ask * (ONE + self.taker_fee_rate)), spec.base_increment)
        else:
            price = bid
            size = order.base_size
            if size is None:
                size = quantize_down((order.quote_size or ZERO) / bid, spec.base_increment)
        self.execute(order, size, price, "TAKER", now)
        order.status = "FILLED"

    def _match(self, order: Order, now: datetime) -> None:
        """A limit order (or a triggered stop) meeting the book: take at the touch, cancel (IOC/FOK) or rest."""
        bid, ask = self.quotes[order.product_id]
        if self._crosses(order):
            self.execute(order, order.remaining, ask if order.side == "BUY" else bid, "TAKER", now)
        elif order.time_in_force in IMMEDIATE:
            self.close(order, "CANCELLED", "Immediate order could not be filled")

    def _crosses(self, order: Order) -> bool:
        bid, ask = self.quotes[order.product_id]
        if order.limit_price is None:
            return False
        return order.limit_price >= ask if order.side == "BUY" else order.limit_price <= bid

    @staticmethod
    def _stop_hit(order: Order, mid: Decimal) -> bool:
        if order.stop_price is None:
            return False
        return mid >= order.stop_price if order.stop_direction == STOP_UP else mid <= order.stop_price

    def _open_orders(self, product_id: str) -> list[Order]:
        return [o for o in self.orders.values() if o.is_open and o.product_id == product_id]

    # ---------------------------------------------------------------- executions

    def execute(self, order: Order, size: Decimal, price: Decimal, liquidity: str, now: datetime) -> Fill:
        """Fill `size` of `order` at `price`, settling balances, the order's hold and the fee."""
        spec = self.products[order.product_id]
        value = size * price
        fee = value * (self.maker_fee_rate if liquidity == "MAKER" else self.taker_fee_rate)
        completes = order.base_size is None or order.filled_size + size >= order.base_size
        if order.hold:
            share = size * (order.limit_price or ZERO) * (ONE + self.hold_fee_rate) if order.side == "BUY" else size
            self._release(order, order.hold if completes else min(order.hold, share))
        base, quote = spec.base_currency, spec.quote_currency
        if order.side == "BUY":
            self.credit(quote, -(value + fee))
            self.credit(base, size)
            self.cost_basis[base] = self.cost_basis.get(base, ZERO) + value + fee
        else:
            holding = self.total(base)
            if holding > 0:
                self.cost_basis[base] -= self.cost_basis.get(base, ZERO) * min(size / holding, ONE)
            self.credit(base, -size)
            self.credit(quote, value - fee)
        order.filled_size += size
        order.filled_value += value
        order.total_fees += fee
        order.number_of_fills += 1
        order.last_fill_time = now
        if completes:
            order.status = "FILLED"
        fill = Fill(
            entry_id=str(uuid.uuid4()),
            trade_id=str(uuid.uuid4()),
            order_id=order.order_id,
            product_id=order.product_id,
            side=order.side,
            price=price,
            size=size,
            commission=fee,
            liquidity_indicator=liquidity,
            trade_time=now,
            size_in_quote=order.quote_size is not None,
            sequence=next(self._sequence),
        )
        self.fills.append(fill)
        self.volume += value
        self.fees_paid += fee
        return fill

    def close(self, order: Order, status: str, message: str = "") -> None:
        order.status = status
        order.cancel_message = message
        self._release(order, order.hold)

    def expire(self, now: datetime) -> None:
        for order in self.orders.values():
            if order.is_open and order.end_time is not None and order.end_time <= now:
                self.close(order, "EXPIRED", "Order expired")

    # ---------------------------------------------------------------- cancels and edits

    def cancel(self, order_ids: list[str]) -> list[JsonObject]:
        results: list[JsonObject] = []
        seen: set[str] = set()
        for order_id in order_ids:
            order = self.orders.get(order_id)
            reason = ""
            if order is None:
                reason = "UNKNOWN_CANCEL_ORDER"
            elif order_id in seen:
                reason = "DUPLICATE_CANCEL_REQUEST"
            elif order.status == "FILLED":
                reason = "ORDER_IS_FULLY_FILLED"
            elif not order.is_open:
                reason = "COMMANDER_REJECTED_CANCEL_ORDER"
            else:
                self.close(order, "CANCELLED", "User requested cancel")
            seen.add(order_id)
            failure = reason or "UNKNOWN_CANCEL_FAILURE_REASON"
            results.append({"success": not reason, "failure_reason": failure, "order_id": order_id})
        return results

    def edit_errors(self, order: Order | None, size: Decimal, price: Decimal) -> list[JsonObject]:
        """Why an edit to (size, price) is refused, in Coinbase's {edit_failure_reason, preview_failure_reason}."""

        def error(edit: str, preview: str = "UNKNOWN_PREVIEW_FAILURE_REASON") -> list[JsonObject]:
            return [{"edit_failure_reason": edit, "preview_failure_reason": preview}]

        if order is None:
            return error("ORDER_NOT_FOUND")
        if order.kind != "limit_limit_gtc":
            return error("ONLY_LIMIT_ORDER_EDITS_SUPPORTED")
        if not order.is_open:
            return error("ONLY_OPEN_ORDERS_CAN_BE_EDITED")
        spec = self.products[order.product_id]
        if size <= 0 or not _on_increment(size, spec.base_increment):
            return error("INVALID_EDITED_SIZE", "PREVIEW_INVALID_SIZE_PRECISION")
        if price <= 0 or not _on_increment(price, spec.quote_increment):
            return error("INVALID_EDITED_PRICE", "PREVIEW_INVALID_PRICE_PRECISION")
        if size < order.filled_size:
            return error("CANNOT_EDIT_TO_BELOW_FILLED_SIZE")
        if size == order.base_size and price == order.limit_price:
            return error("EDIT_REQUEST_EQUAL_TO_ORIGINAL_REQUEST")
        bid, ask = self.quotes[order.product_id]
        if order.post_only and (price >= ask if order.side == "BUY" else price <= bid):
            return error("UNKNOWN_EDIT_ORDER_FAILURE_REASON", "PREVIEW_INVALID_LIMIT_PRICE_POST_ONLY")
        if self._edit_hold(order, size, price) > self.available[order.hold_currency] + order.hold:
            return error("UNKNOWN_EDIT_ORDER_FAILURE_REASON", "PREVIEW_INSUFFICIENT_FUND")
        return []

    def _edit_hold(self, order: Order, size: Decimal, price: Decimal) -> Decimal:
        rest = size - order.filled_size
        return rest * price * (ONE + self.hold_fee_rate) if order.side == "BUY" else rest

    def edit(self, order: Order, size: Decimal, price: Decimal, now: datetime) -> None:
        """Apply an edit that `edit_errors` accepted: new size and price, new hold, and a match if it now crosses."""
        self._release(order, order.hold)
        order.base_size, order.limit_price = size, price
        order.configuration.update(base_size=_fmt(size), limit_price=_fmt(price))
        order.edit_history.append({"price": _fmt(price), "size": _fmt(size), "replace_accept_timestamp": _rfc3339(now)})
        if order.remaining <= 0:
            order.status = "FILLED"
            return
        self._reserve(order, order.hold_currency, self._edit_hold(order, size, price))
        self._match(order, now)


# --------------------------------------------------------------------------------------------------- JSON shapes


def _parse_order_request(body: JsonObject) -> _OrderRequest:
    """The order fields of a create/preview body; _Rejected for an unsupported configuration, 400 for bad numbers."""
    configuration = body.get("order_configuration")
    if not isinstance(configuration, dict) or len(configuration) != 1:
        raise _Rejected("UNSUPPORTED_ORDER_CONFIGURATION", "PREVIEW_INVALID_ORDER_CONFIG", "One order_configuration")
    kind, fields = next(iter(configuration.items()))
    spec = ORDER_CONFIGS.get(kind)
    if spec is None or not isinstance(fields, dict):
        raise _Rejected("UNSUPPORTED_ORDER_CONFIGURATION", "PREVIEW_INVALID_ORDER_CONFIG", f"Unsupported {kind}")
    present = {name: fields[name] for name in spec.fields if fields.get(name) not in (None, "")}
    missing = [name for name in spec.required if name not in present]
    if kind == "market_market_ioc" and len(present) != 1:
        missing = ["exactly one of quote_size and base_size"]
    if missing:
        raise _Rejected("INVALID_REQUEST", "PREVIEW_INVALID_ORDER_CONFIG", f"{kind} needs {', '.join(missing)}")

    def number(name: str) -> Decimal | None:
        return _decimal(present[name], f"{kind}.{name}") if name in present else None

    stop_direction = present.get("stop_direction")
    if stop_direction is not None and stop_direction not in (STOP_UP, STOP_DOWN):
        raise _Rejected("UNSUPPORTED_ORDER_CONFIGURATION", "PREVIEW_INVALID_ORDER_CONFIG", "Invalid stop_direction")
    end_time = _parse_time(str(present["end_time"]), f"{kind}.end_time") if "end_time" in present else None
    return _OrderRequest(
        client_order_id=str(body.get("client_order_id") or ""),
        product_id=str(body.get("product_id") or ""),
        side=str(body.get("side") or ""),
        kind=kind,
        configuration=present,
        base_size=number("base_size"),
        quote_size=number("quote_size"),
        limit_price=number("limit_price"),
        stop_price=number("stop_price"),
        stop_direction=stop_direction,
        end_time=end_time,
        post_only=present.get("post_only") in (True, "true", "True"),
    )


def _order_created(order: Order) -> JsonObject:
    return {
        "success": True,
        "success_response": {
            "order_id": order.order_id,
            "product_id": order.product_id,
            "side": order.side,
            "client_order_id": order.client_order_id,
        },
        "order_configuration": {order.kind: order.configuration},
    }


def _order_failed(rejection: _Rejected, configuration: Any) -> JsonObject:
    answer: JsonObject = {
        "success": False,
        "failure_reason": "UNKNOWN_FAILURE_REASON",
        "order_id": "",
        "error_response": {
            "error": rejection.error,
            "message": rejection.message,
            "error_details": "",
            "preview_failure_reason": rejection.preview,
            "new_order_failure_reason": rejection.error,
        },
    }
    if isinstance(configuration, dict) and configuration:
        answer["order_configuration"] = configuration
    return answer


def _order_json(order: Order, user_id: str, portfolio_id: str) -> JsonObject:
    size = order.base_size
    completion = (
        order.filled_size / size * HUNDRED if size else (HUNDRED if order.status == "FILLED" else ZERO)
    ).quantize(Decimal("0.01"))
    after_fees = order.filled_value + order.total_fees if order.side == "BUY" else order.filled_value - order.total_fees
    return {
        "order_id": order.order_id,
        "product_id": order.product_id,
        "user_id": user_id,
        "order_configuration": {order.kind: order.configuration},
        "side": order.side,
        "client_order_id": order.client_order_id,
        "status": order.status,
        "time_in_force": order.time_in_force,
        "created_time": _rfc3339(order.created_time),
        "completion_percentage": _fmt(completion),
        "filled_size": _fmt(order.filled_size),
        "average_filled_price": _fmt(order.average_filled_price),
        "fee": "",
        "number_of_fills": str(order.number_of_fills),
        "filled_value": _fmt(order.filled_value),
        "pending_cancel": False,
        "size_in_quote": order.quote_size is not None,
        "total_fees": _fmt(order.total_fees),
        "size_inclusive_of_fees": order.quote_size is not None and order.side == "BUY",
        "total_value_after_fees": _fmt(after_fees),
        "trigger_status": order.trigger_status,
        "order_type": order.order_type,
        "reject_reason": "REJECT_REASON_UNSPECIFIED",
        "settled": not order.is_open,
        "product_type": "SPOT",
        "reject_message": "",
        "cancel_message": order.cancel_message,
        "order_placement_source": "RETAIL_ADVANCED",
        "outstanding_hold_amount": _fmt(order.hold),
        "is_liquidation": False,
        "last_fill_time": _rfc3339(order.last_fill_time) if order.last_fill_time else None,
        "edit_history": list(order.edit_history),
        "leverage": "",
        "margin_type": "UNKNOWN_MARGIN_TYPE",
        "retail_portfolio_id": portfolio_id,
        "originating_order_id": "",
        "attached_order_id": "",
    }


def _fill_json(fill: Fill, user_id: str, portfolio_id: str) -> JsonObject:
    return {
        "entry_id": fill.entry_id,
        "trade_id": fill.trade_id,
        "order_id": fill.order_id,
        "trade_time": _rfc3339(fill.trade_time),
        "trade_type": "FILL",
        "price": _fmt(fill.price),
        "size": _fmt(fill.size),
        "commission": _fmt(fill.commission),
        "product_id": fill.product_id,
        "sequence_timestamp": _rfc3339(fill.trade_time),
        "liquidity_indicator": fill.liquidity_indicator,
        "size_in_quote": fill.size_in_quote,
        "user_id": user_id,
        "side": fill.side,
        "retail_portfolio_id": portfolio_id,
    }


def _candle_json(candle: Candle) -> JsonObject:
    return {
        "start": str(int(candle.start.timestamp())),
        "low": _fmt(candle.low),
        "high": _fmt(candle.high),
        "open": _fmt(candle.open),
        "close": _fmt(candle.close),
        "volume": _fmt(candle.volume),
    }


def _aggregate(bars: list[Candle], seconds: int) -> list[Candle]:
    """One-minute bars (oldest first) merged into `seconds`-long candles aligned on the epoch."""
    merged: list[Candle] = []
    for bar in bars:
        start = datetime.fromtimestamp(int(bar.start.timestamp()) // seconds * seconds, tz=UTC)
        if merged and merged[-1].start == start:
            last = merged[-1]
            high, low = max(last.high, bar.high), min(last.low, bar.low)
            merged[-1] = Candle(start, last.open, high, low, bar.close, last.volume + bar.volume)
        else:
            merged.append(replace(bar, start=start))
    return merged


def _page_by_sequence(
    items: list[T], sequence: Callable[[T], int], cursor: str | None, limit: int
) -> tuple[list[T], str]:
    """A page of `items` (newest first); the cursor is the sequence of the last item served, "" on the last page."""
    if cursor:
        try:
            below = int(cursor)
        except ValueError:
            raise _invalid(f"cursor {cursor!r} is not valid") from None
        items = [item for item in items if sequence(item) < below]
    page = items[:limit]
    return page, str(sequence(page[-1])) if len(items) > limit else ""


# --------------------------------------------------------------------------------------------------- HTTP plumbing

Scope = Literal["public", "auth", "view", "trade"]


@dataclass(frozen=True)
class _Call:
    """One parsed request as an endpoint handler sees it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: JsonObject
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> str | None:
        values = [value for value in self.query.get(name, []) if value != ""]
        return values[0] if values else None

    def args(self, name: str) -> list[str]:
        """A repeated query parameter (product_ids=A&product_ids=B); comma-separated values are split too."""
        return [part for value in self.query.get(name, []) for part in value.split(",") if part]

    def int_arg(self, name: str, default: int, maximum: int) -> int:
        text = self.arg(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise _invalid(f"{name} must be an integer, not {text!r}") from None
        return default if value <= 0 else min(value, maximum)

    def time_arg(self, name: str) -> datetime | None:
        text = self.arg(name)
        return _parse_time(text, name) if text is not None else None


Handler = Callable[["AdvancedTradeServer", _Call], JsonObject]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    scope: Scope


def _route(method: str, path: str, handler: Handler, scope: Scope = "view") -> _Route:
    """A route for API + `path`, where "{name}" matches one path segment passed to the handler as params[name]."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", API + path)
    return _Route(method, re.compile(regex), handler, scope)


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


class AdvancedTradeServer:
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
    ) -> None:
        self.key_name = key_name
        pem = public_key_pem.encode("ascii") if isinstance(public_key_pem, str) else public_key_pem
        self._public_key = serialization.load_pem_public_key(pem)
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
        self._faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._httpd: _HTTPSServer | None = None
        self._thread: threading.Thread | None = None

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
            return exchange.execute(order, amount, at, "MAKER", self.now())

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
        with self._lock:
            fault = next((f for f in self._faults if f.matches(method, call.path)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            recorded = None if method == "GET" else copy.deepcopy(body)
            kind = fault.kind if fault is not None else None
            self._requests.append(RecordedRequest(method, call.path, call.query, recorded, kind))
        authorization = handler.headers.get("Authorization")
        answer = self._answer(call, authorization, body_error, fault)
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
        if not authorization or not authorization.startswith("Bearer "):
            return "missing bearer token"
        token = authorization.removeprefix("Bearer ").strip()
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                cast(Any, self._public_key),
                algorithms=["ES256"],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            return "invalid jwt signature"
        except jwt.InvalidTokenError as error:
            return f"invalid jwt: {error}"
        if header.get("alg") != "ES256":
            return "jwt alg must be ES256"
        if header.get("kid") != self.key_name:
            return "jwt kid is not a known key"
        if claims.get("sub") != self.key_name:
            return "jwt sub does not match the key"
        if claims.get("iss") != "cdp":
            return 'jwt iss must be "cdp"'
        nbf, exp = claims.get("nbf"), claims.get("exp")
        if not isinstance(nbf, int | float) or not isinstance(exp, int | float):
            return "jwt nbf and exp are required"
        now = self.now().timestamp()
        if nbf > now + JWT_CLOCK_SKEW:
            return "jwt not yet valid"
        if exp <= now:
            return "jwt expired"
        if claims.get("uri") != f"{call.method} {self._host}:{self._port}{call.path}":
            return "jwt uri does not match the request"
        return None

    def _authorize(self, scope: Scope) -> None:
        if scope == "view" and not self.permissions.get("can_view"):
            raise _permission_denied("Missing required scopes")
        if scope == "trade" and not self.permissions.get("can_trade"):
            raise _permission_denied("Missing required scopes")

    def _spec(self, product_id: str) -> ProductSpec:
        spec = self._exchange.products.get(product_id)
        if spec is None:
            raise _not_found(f"product {product_id} not found")
        return spec

    # ---------------------------------------------------------------- endpoints: market data

    def _get_time(self, call: _Call) -> JsonObject:
        now = self.now()
        millis = int(now.timestamp() * 1000)
        return {"iso": _rfc3339(now), "epochSeconds": str(millis // 1000), "epochMillis": str(millis)}

    def _product_json(self, spec: ProductSpec) -> JsonObject:
        exchange = self._exchange
        price = exchange.price(spec.product_id)
        day = exchange.bars[spec.product_id][-1440:]
        volume = sum((bar.volume for bar in day), ZERO)
        change = (price - day[0].open) / day[0].open * HUNDRED
        return {
            "product_id": spec.product_id,
            "price": _fmt(price),
            "price_percentage_change_24h": _fmt(change.quantize(Decimal("0.00000001"))),
            "volume_24h": _fmt(volume),
            "volume_percentage_change_24h": "0",
            "base_increment": _fmt(spec.base_increment),
            "quote_increment": _fmt(spec.quote_increment),
            "quote_min_size": _fmt(spec.quote_min_size),
            "quote_max_size": _fmt(spec.quote_max_size),
            "base_min_size": _fmt(spec.base_min_size),
            "base_max_size": _fmt(spec.base_max_size),
            "base_name": CURRENCY_NAMES.get(spec.base_currency, spec.base_currency),
            "quote_name": CURRENCY_NAMES.get(spec.quote_currency, spec.quote_currency),
            "watched": False,
            "is_disabled": False,
            "new": False,
            "status": "online",
            "cancel_only": spec.cancel_only,
            "limit_only": spec.limit_only,
            "post_only": spec.post_only,
            "trading_disabled": spec.trading_disabled,
            "auction_mode": False,
            "product_type": "SPOT",
            "quote_currency_id": spec.quote_currency,
            "base_currency_id": spec.base_currency,
            "fcm_trading_session_details": None,
            "mid_market_price": "",
            "alias": "",
            "alias_to": [],
            "base_display_symbol": spec.base_currency,
            "quote_display_symbol": spec.quote_currency,
            "view_only": False,
            "price_increment": _fmt(spec.quote_increment),
            "display_name": spec.product_id,
            "product_venue": "CBE",
            "approximate_quote_24h_volume": _fmt((volume * price).quantize(spec.quote_increment)),
        }

    def _get_products(self, call: _Call) -> JsonObject:
        wanted = call.args("product_ids")
        specs = [s for s in self._exchange.products.values() if not wanted or s.product_id in wanted]
        if call.arg("product_type") not in (None, "SPOT"):
            specs = []
        offset = call.int_arg("offset", 0, len(specs))
        limit = call.int_arg("limit", len(specs) or 1, 10_000)
        page = specs[offset : offset + limit]
        return {"products": [self._product_json(spec) for spec in page], "num_products": len(specs)}

    def _get_product(self, call: _Call) -> JsonObject:
        return self._product_json(self._spec(call.params["product_id"]))

    def _get_candles(self, call: _Call) -> JsonObject:
        spec = self._spec(call.params["product_id"])
        granularity = call.arg("granularity") or ""
        seconds = GRANULARITIES.get(granularity)
        if seconds is None:
            raise _invalid(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")
        start, end = call.arg("start"), call.arg("end")
        if start is None or end is None or not start.isdigit() or not end.isdigit():
            raise _invalid("start and end are required, as UNIX seconds")
        first, last = int(start), int(end)
        if first > last:
            raise _invalid("start must not be after end")
        if (last - first) // seconds > MAX_CANDLES:
            raise _invalid(
                f"start and end argument is invalid - number of candles requested should be less than {MAX_CANDLES}"
            )
        limit = call.int_arg("limit", MAX_CANDLES, MAX_CANDLES)
        candles = _aggregate(self._exchange.minute_bars(spec.product_id, self.now()), seconds)
        chosen = [c for c in candles if first <= int(c.start.timestamp()) <= last]
        return {"candles": [_candle_json(c) for c in reversed(chosen)][:limit]}

    def _book_json(self, spec: ProductSpec, levels: int) -> JsonObject:
        bid, ask = self._exchange.quotes[spec.product_id]
        step = max(spec.quote_increment, quantize_down(bid * Decimal("0.00002"), spec.quote_increment))
        sizes = [Decimal("0.25") * (level + 1) for level in range(levels)]
        return {
            "product_id": spec.product_id,
            "bids": [{"price": _fmt(bid - step * i), "size": _fmt(size)} for i, size in enumerate(sizes)],
            "asks": [{"price": _fmt(ask + step * i), "size": _fmt(size)} for i, size in enumerate(sizes)],
            "time": _rfc3339(self.now()),
        }

    def _get_product_book(self, call: _Call) -> JsonObject:
        spec = self._spec(call.arg("product_id") or "")
        bid, ask = self._exchange.quotes[spec.product_id]
        mid = (bid + ask) / 2
        return {
            "pricebook": self._book_json(spec, call.int_arg("limit", 10, 500)),
            "last": _fmt(self._exchange.price(spec.product_id)),
            "mid_market": _fmt(mid),
            "spread_bps": _fmt(((ask - bid) / mid * Decimal(10000)).quantize(Decimal("0.0001"))),
            "spread_absolute": _fmt(ask - bid),
        }

    def _get_best_bid_ask(self, call: _Call) -> JsonObject:
        wanted = call.args("product_ids") or list(self._exchange.products)
        specs = [self._exchange.products[p] for p in wanted if p in self._exchange.products]
        return {"pricebooks": [self._book_json(spec, 1) for spec in specs]}

    # ---------------------------------------------------------------- endpoints: accounts and portfolios

    def _account_json(self, currency: str) -> JsonObject:
        exchange = self._exchange
        created = _rfc3339(datetime(2024, 1, 1, tzinfo=UTC))
        return {
            "uuid": exchange.account_ids[currency],
            "name": f"{currency} Wallet",
            "currency": currency,
            "available_balance": _money(exchange.available[currency], currency),
            "default": True,
            "active": True,
            "created_at": created,
            "updated_at": _rfc3339(self.now()),
            "deleted_at": None,
            "type": "ACCOUNT_TYPE_FIAT" if currency in FIAT else "ACCOUNT_TYPE_CRYPTO",
            "ready": True,
            "hold": _money(exchange.held[currency], currency),
            "retail_portfolio_id": self.portfolio_uuid,
        }

    def _get_accounts(self, call: _Call) -> JsonObject:
        currencies = sorted(self._exchange.available)
        limit = call.int_arg("limit", ACCOUNTS_DEFAULT_LIMIT, ACCOUNTS_MAX_LIMIT)
        cursor = call.arg("cursor")
        if cursor is not None and not cursor.isdigit():
            raise _invalid(f"cursor {cursor!r} is not valid")
        offset = int(cursor or 0)
        page = currencies[offset : offset + limit]
        has_next = offset + limit < len(currencies)
        return {
            "accounts": [self._account_json(currency) for currency in page],
            "has_next": has_next,
            "cursor": str(offset + limit) if has_next else "",
            "size": len(page),
        }

    def _get_account(self, call: _Call) -> JsonObject:
        for currency, account_id in self._exchange.account_ids.items():
            if account_id == call.params["account_uuid"]:
                return {"account": self._account_json(currency)}
        raise _not_found(f"account {call.params['account_uuid']} not found")

    def _portfolios(self) -> list[JsonObject]:
        default_type = self.permissions["portfolio_type"]
        portfolios = [{"name": "Default", "uuid": self.portfolio_uuid, "type": default_type, "deleted": False}]
        if self.derivatives:
            intx = {"name": "Perpetuals", "uuid": self.intx_portfolio_uuid, "type": "INTX", "deleted": False}
            portfolios.append(intx)
        return portfolios

    def _get_portfolios(self, call: _Call) -> JsonObject:
        kind = call.arg("portfolio_type")
        return {"portfolios": [p for p in self._portfolios() if kind in (None, p["type"])]}

    def _get_portfolio_breakdown(self, call: _Call) -> JsonObject:
        portfolio = next((p for p in self._portfolios() if p["uuid"] == call.params["portfolio_uuid"]), None)
        if portfolio is None:
            raise _not_found(f"portfolio {call.params['portfolio_uuid']} not found")
        exchange = self._exchange
        spot = portfolio["uuid"] == self.portfolio_uuid
        currencies = [c for c in sorted(exchange.available) if spot and (exchange.total(c) > 0 or c == "USD")]
        worth = {c: exchange.total(c) * exchange.usd_price(c) for c in currencies}
        total = sum(worth.values(), ZERO)
        cash = sum((worth[c] for c in currencies if c in USD_PEGGED), ZERO)
        perp_pnl = sum((p.unrealized_pnl for p in self._perp_positions.values()), ZERO) if not spot else ZERO
        positions = []
        for currency in currencies:
            quantity, price = exchange.total(currency), exchange.usd_price(currency)
            basis = exchange.cost_basis.get(currency, ZERO)
            available = exchange.available[currency]
            positions.append(
                {
                    "asset": currency,
                    "account_uuid": exchange.account_ids[currency],
                    "total_balance_fiat": float(worth[currency]),
                    "total_balance_crypto": float(quantity),
                    "available_to_trade_fiat": float(available * price),
                    "allocation": float(worth[currency] / total) if total else 0.0,
                    "cost_basis": _money(basis.quantize(Decimal("0.01")), "USD"),
                    "is_cash": currency in USD_PEGGED,
                    "average_entry_price": _money(
                        (basis / quantity).quantize(Decimal("0.01")) if quantity else ZERO, "USD"
                    ),
                    "available_to_trade_crypto": float(available),
                    "unrealized_pnl": float(worth[currency] - basis),
                    "available_to_transfer_fiat": float(available * price),
                    "available_to_transfer_crypto": float(available),
                    "account_type": "ACCOUNT_TYPE_FIAT" if currency in FIAT else "ACCOUNT_TYPE_CRYPTO",
                }
            )
        balances = {
            "total_balance": _money(total, "USD"),
            "total_futures_balance": _money(ZERO, "USD"),
            "total_cash_equivalent_balance": _money(cash, "USD"),
            "total_crypto_balance": _money(total - cash, "USD"),
            "futures_unrealized_pnl": _money(ZERO, "USD"),
            "perp_unrealized_pnl": _money(perp_pnl, "USD"),
        }
        breakdown = {
            "portfolio": portfolio,
            "portfolio_balances": balances,
            "spot_positions": positions,
            "perp_positions": [],
            "futures_positions": [],
        }
        return {"breakdown": breakdown}

    def _get_transaction_summary(self, call: _Call) -> JsonObject:
        exchange = self._exchange
        return {
            "total_volume": float(exchange.volume),
            "total_fees": float(exchange.fees_paid),
            "fee_tier": {
                "pricing_tier": "Advanced 1",
                "usd_from": "0",
                "usd_to": "10000",
                "taker_fee_rate": _fmt(exchange.taker_fee_rate),
                "maker_fee_rate": _fmt(exchange.maker_fee_rate),
                "aop_from": "",
                "aop_to": "",
            },
            "margin_rate": None,
            "goods_and_services_tax": None,
            "advanced_trade_only_volume": float(exchange.volume),
            "advanced_trade_only_fees": float(exchange.fees_paid),
            "coinbase_pro_volume": 0,
            "coinbase_pro_fees": 0,
            "total_balance": "",
            "has_promo_fee": False,
        }

    def _get_key_permissions(self, call: _Call) -> JsonObject:
        return {
            "can_view": bool(self.permissions["can_view"]),
            "can_trade": bool(self.permissions["can_trade"]),
            "can_transfer": bool(self.permissions["can_transfer"]),
            "portfolio_uuid": self.portfolio_uuid,
            "portfolio_type": self.permissions["portfolio_type"],
        }

    # ---------------------------------------------------------------- endpoints: orders

    def _post_order(self, call: _Call) -> JsonObject:
        client_order_id = call.body.get("client_order_id")
        if not isinstance(client_order_id, str) or not client_order_id:
            raise _invalid("client_order_id is required")
        existing = self._exchange.client_ids.get(client_order_id)
        if existing is not None:  # Coinbase answers a repeated client_order_id with the original order
            return _order_created(self._exchange.orders[existing])
        try:
            order = self._exchange.place(_parse_order_request(call.body), self.now())
        except _Rejected as rejection:
            return _order_failed(rejection, call.body.get("order_configuration"))
        return _order_created(order)

    def _post_preview(self, call: _Call) -> JsonObject:
        exchange = self._exchange
        errors: list[str] = []
        base = value = commission = ZERO
        best_bid = best_ask = ZERO
        try:
            request = _parse_order_request(call.body)
        except _Rejected as rejection:
            errors.append(rejection.preview)
        else:
            try:
                exchange.check(request, self.now())
            except _Rejected as rejection:
                errors.append(rejection.preview)
            spec = exchange.products.get(request.product_id)
            if spec is not None:
                best_bid, best_ask = exchange.quotes[spec.product_id]
                base, value, commission = self._estimate(request, spec)
        side = call.body.get("side")
        return {
            "order_total": _fmt(value + commission if side == "BUY" else value - commission),
            "commission_total": _fmt(commission),
            "errs": errors,
            "warning": [],
            "quote_size": _fmt(value),
            "base_size": _fmt(base),
            "best_bid": _fmt(best_bid),
            "best_ask": _fmt(best_ask),
            "is_max": False,
            "preview_id": str(uuid.uuid4()),
            "slippage": "0",
        }

    def _estimate(self, request: _OrderRequest, spec: ProductSpec) -> tuple[Decimal, Decimal, Decimal]:
        """(base size, value, commission) the order would execute at now, or rest at, for previews."""
        exchange = self._exchange
        bid, ask = exchange.quotes[spec.product_id]
        touch = ask if request.side == "BUY" else bid
        if request.spec.order_type == "MARKET":
            rate = exchange.taker_fee_rate
            base = request.base_size
            if base is None:
                divisor = touch * (ONE + rate) if request.side == "BUY" else touch
                base = quantize_down((request.quote_size or ZERO) / divisor, spec.base_increment)
            return base, base * touch, base * touch * rate
        limit, base = request.limit_price or ZERO, request.base_size or ZERO
        crosses = limit >= ask if request.side == "BUY" else limit <= bid
        price = touch if crosses and request.stop_price is None else limit
        rate = exchange.taker_fee_rate if crosses else exchange.maker_fee_rate
        return base, base * price, base * price * rate

    def _edit_target(self, call: _Call) -> tuple[Order | None, Decimal, Decimal]:
        order_id = call.body.get("order_id")
        if not isinstance(order_id, str) or not order_id:
            raise _invalid("order_id is required")
        order = self._exchange.orders.get(order_id)
        size_text, price_text = call.body.get("size"), call.body.get("price")
        size = _decimal(size_text, "size") if size_text not in (None, "") else None
        price = _decimal(price_text, "price") if price_text not in (None, "") else None
        return (
            order,
            size if size is not None else (order.base_size if order and order.base_size else ZERO),
            price if price is not None else (order.limit_price if order and order.limit_price else ZERO),
        )

    def _post_edit(self, call: _Call) -> JsonObject:
        order, size, price = self._edit_target(call)
        errors = self._exchange.edit_errors(order, size, price)
        if order is not None and not errors:
            self._exchange.edit(order, size, price, self.now())
        return {"success": not errors, "errors": errors}

    def _post_edit_preview(self, call: _Call) -> JsonObject:
        order, size, price = self._edit_target(call)
        exchange = self._exchange
        errors = exchange.edit_errors(order, size, price)
        bid, ask = exchange.quotes[order.product_id] if order else (ZERO, ZERO)
        crosses = order is not None and (price >= ask if order.side == "BUY" else price <= bid)
        rate = exchange.taker_fee_rate if crosses else exchange.maker_fee_rate
        value = size * price
        commission = value * rate
        buy = order is not None and order.side == "BUY"
        return {
            "errors": errors,
            "slippage": "0",
            "order_total": _fmt(value + commission if buy else value - commission),
            "commission_total": _fmt(commission),
            "quote_size": _fmt(value),
            "base_size": _fmt(size),
            "best_bid": _fmt(bid),
            "best_ask": _fmt(ask),
            "average_filled_price": _fmt(order.average_filled_price if order else ZERO),
        }

    def _post_batch_cancel(self, call: _Call) -> JsonObject:
        order_ids = call.body.get("order_ids")
        if not isinstance(order_ids, list) or not order_ids or not all(isinstance(i, str) for i in order_ids):
            raise _invalid("order_ids must be a non-empty list of order ids")
        if len(order_ids) > MAX_CANCEL_IDS:
            raise _invalid(f"order_ids has {len(order_ids)} ids; at most {MAX_CANCEL_IDS} orders can be cancelled")
        return {"results": self._exchange.cancel(order_ids)}

    def _get_order(self, call: _Call) -> JsonObject:
        order = self._exchange.orders.get(call.params["order_id"])
        if order is None:
            raise _not_found(f"order {call.params['order_id']} not found")
        return {"order": _order_json(order, self.user_id, self.portfolio_uuid)}

    def _list_orders(self, call: _Call) -> JsonObject:
        statuses = call.args("order_status")
        if "OPEN" in statuses and len(set(statuses)) > 1:
            raise _invalid("OPEN cannot be combined with other order_status values")
        ids, products = call.args("order_ids"), call.args("product_ids")
        types, side = call.args("order_types"), call.arg("order_side")
        start, end = call.time_arg("start_date"), call.time_arg("end_date")
        spot = call.arg("product_type") in (None, "SPOT")  # every order here is a SPOT order
        orders = [
            order
            for order in sorted(self._exchange.orders.values(), key=lambda o: o.sequence, reverse=True)
            if spot
            and (not ids or order.order_id in ids)
            and (not products or order.product_id in products)
            and (not statuses or order.status in statuses)
            and (not types or order.order_type in types)
            and (side is None or order.side == side)
            and (start is None or order.created_time >= start)
            and (end is None or order.created_time <= end)
        ]
        limit = call.int_arg("limit", ORDERS_DEFAULT_LIMIT, ORDERS_MAX_LIMIT)
        page, cursor = _page_by_sequence(orders, lambda o: o.sequence, call.arg("cursor"), limit)
        return {
            "orders": [_order_json(order, self.user_id, self.portfolio_uuid) for order in page],
            "sequence": "0",
            "has_next": bool(cursor),
            "cursor": cursor,
        }

    def _list_fills(self, call: _Call) -> JsonObject:
        ids, trade_ids, products = call.args("order_ids"), call.args("trade_ids"), call.args("product_ids")
        start, end = call.time_arg("start_sequence_timestamp"), call.time_arg("end_sequence_timestamp")
        fills = [
            fill
            for fill in reversed(self._exchange.fills)
            if (not ids or fill.order_id in ids)
            and (not trade_ids or fill.trade_id in trade_ids)
            and (not products or fill.product_id in products)
            and (start is None or fill.trade_time >= start)
            and (end is None or fill.trade_time <= end)
        ]
        limit = call.int_arg("limit", FILLS_DEFAULT_LIMIT, FILLS_MAX_LIMIT)
        page, cursor = _page_by_sequence(fills, lambda f: f.sequence, call.arg("cursor"), limit)
        return {"fills": [_fill_json(fill, self.user_id, self.portfolio_uuid) for fill in page], "cursor": cursor}

    # ---------------------------------------------------------------- endpoints: INTX perpetuals

    def _intx_portfolio(self, call: _Call) -> str:
        if not self.derivatives:
            raise _permission_denied("INTX perpetuals are not enabled for this key")
        if call.params["portfolio_uuid"] != self.intx_portfolio_uuid:
            raise _not_found(f"perpetuals portfolio {call.params['portfolio_uuid']} not found")
        return self.intx_portfolio_uuid

    def _position_json(self, position: PerpPosition, portfolio_uuid: str) -> JsonObject:
        leverage = position.leverage or ONE
        initial_margin = position.notional / leverage
        liquidation = position.entry_vwap * (ONE - ONE / leverage if position.net_size > 0 else ONE + ONE / leverage)
        return {
            "product_id": position.symbol,
            "product_uuid": position.product_uuid,
            "portfolio_uuid": portfolio_uuid,
            "symbol": position.symbol,
            "vwap": _money(position.entry_vwap, "USD"),
            "entry_vwap": _money(position.entry_vwap, "USD"),
            "position_side": "POSITION_SIDE_LONG" if position.net_size > 0 else "POSITION_SIDE_SHORT",
            "margin_type": position.margin_type,
            "net_size": _fmt(position.net_size),
            "buy_order_size": "0",
            "sell_order_size": "0",
            "im_contribution": _fmt(ONE / leverage),
            "unrealized_pnl": _money(position.unrealized_pnl, "USD"),
            "mark_price": _money(position.mark_price, "USD"),
            "liquidation_price": _money(liquidation.quantize(Decimal("0.01")), "USD"),
            "leverage": _fmt(leverage),
            "im_notional": _money(initial_margin, "USD"),
            "mm_notional": _money(initial_margin / 2, "USD"),
            "position_notional": _money(position.notional, "USD"),
            "aggregated_pnl": _money(position.unrealized_pnl, "USD"),
        }

    def _get_intx_positions(self, call: _Call) -> JsonObject:
        portfolio = self._intx_portfolio(call)
        positions = list(self._perp_positions.values())
        pnl = sum((p.unrealized_pnl for p in positions), ZERO)
        return {
            "positions": [self._position_json(p, portfolio) for p in positions],
            "summary": {"aggregated_pnl": _money(pnl, "USD")},
        }

    def _get_intx_position(self, call: _Call) -> JsonObject:
        portfolio = self._intx_portfolio(call)
        position = self._perp_positions.get(call.params["symbol"])
        if position is None:
            raise _not_found(f"no position in {call.params['symbol']}")
        return {"position": self._position_json(position, portfolio)}

    def _get_intx_portfolio(self, call: _Call) -> JsonObject:
        portfolio = self._intx_portfolio(call)
        positions = list(self._perp_positions.values())
        collateral = sum(self._perp_collateral.values(), ZERO)
        pnl = sum((p.unrealized_pnl for p in positions), ZERO)
        notional = sum((p.notional for p in positions), ZERO)
        initial_margin = sum((p.notional / (p.leverage or ONE) for p in positions), ZERO)
        total = collateral + pnl
        buying_power = max(total - initial_margin, ZERO)
        margin_ratio = (initial_margin / total).quantize(Decimal("0.0001")) if total > 0 else ZERO
        summary = {
            "portfolio_uuid": portfolio,
            "collateral": _fmt(collateral),
            "position_notional": _fmt(notional),
            "open_position_notional": _fmt(notional),
            "pending_fees": "0",
            "borrow": "0",
            "accrued_interest": "0",
            "rolling_debt": "0",
            "portfolio_initial_margin": _fmt(margin_ratio),
            "portfolio_im_notional": _money(initial_margin, "USD"),
            "liquidation_percentage": "0",
            "liquidation_buffer": _fmt(buying_power),
            "margin_type": "MARGIN_TYPE_CROSS",
            "margin_flags": "PORTFOLIO_MARGIN_FLAGS_UNSPECIFIED",
            "liquidation_status": "PORTFOLIO_LIQUIDATION_STATUS_NOT_LIQUIDATING",
            "unrealized_pnl": _money(pnl, "USD"),
            "total_balance": _money(total, "USD"),
        }
        return {
            "portfolios": [summary],
            "summary": {
                "unrealized_pnl": _money(pnl, "USD"),
                "buying_power": _money(buying_power, "USD"),
                "total_balance": _money(total, "USD"),
                "max_withdrawal_amount": _money(buying_power, "USD"),
            },
        }

    def _get_intx_balances(self, call: _Call) -> JsonObject:
        portfolio = self._intx_portfolio(call)
        balances = [
            {
                "asset": {
                    "asset_id": asset,
                    "asset_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, asset)),
                    "asset_name": asset,
                    "status": "ACTIVE",
                    "collateral_weight": "1",
                    "account_collateral_limit": "",
                    "ecosystem_collateral_limit_breached": False,
                    "asset_icon_url": "",
                    "supported_networks_enabled": True,
                },
                "quantity": _fmt(quantity),
                "hold": "0",
                "transfer_hold": "0",
                "collateral_value": _fmt(quantity),
                "collateral_weight": "1",
                "max_withdraw_amount": _fmt(quantity),
                "loan": "0",
                "loan_collateral_requirement_usd": "0",
                "pledged_quantity": "0",
            }
            for asset, quantity in self._perp_collateral.items()
        ]
        return {
            "portfolio_balances": [
                {"portfolio_uuid": portfolio, "balances": balances, "is_margin_limit_reached": False}
            ]
        }


# The route table: first match wins, so fixed paths come before "{id}" paths that would also match them.
ROUTES: tuple[_Route, ...] = (
    _route("GET", "/time", AdvancedTradeServer._get_time, "public"),
    _route("GET", "/market/products", AdvancedTradeServer._get_products, "public"),
    _route("GET", "/market/products/{product_id}", AdvancedTradeServer._get_product, "public"),
    _route("GET", "/market/products/{product_id}/candles", AdvancedTradeServer._get_candles, "public"),
    _route("GET", "/market/product_book", AdvancedTradeServer._get_product_book, "public"),
    _route("GET", "/accounts", AdvancedTradeServer._get_accounts),
    _route("GET", "/accounts/{account_uuid}", AdvancedTradeServer._get_account),
    _route("GET", "/products", AdvancedTradeServer._get_products),
    _route("GET", "/products/{product_id}", AdvancedTradeServer._get_product),
    _route("GET", "/products/{product_id}/candles", AdvancedTradeServer._get_candles),
    _route("GET", "/product_book", AdvancedTradeServer._get_product_book),
    _route("GET", "/best_bid_ask", AdvancedTradeServer._get_best_bid_ask),
    _route("POST", "/orders", AdvancedTradeServer._post_order, "trade"),
    _route("POST", "/orders/preview", AdvancedTradeServer._post_preview, "trade"),
    _route("POST", "/orders/edit", AdvancedTradeServer._post_edit, "trade"),
    _route("POST", "/orders/edit_preview", AdvancedTradeServer._post_edit_preview, "trade"),
    _route("POST", "/orders/batch_cancel", AdvancedTradeServer._post_batch_cancel, "trade"),
    _route("GET", "/orders/historical/batch", AdvancedTradeServer._list_orders),
    _route("GET", "/orders/historical/fills", AdvancedTradeServer._list_fills),
    _route("GET", "/orders/historical/{order_id}", AdvancedTradeServer._get_order),
    _route("GET", "/portfolios", AdvancedTradeServer._get_portfolios),
    _route("GET", "/portfolios/{portfolio_uuid}", AdvancedTradeServer._get_portfolio_breakdown),
    _route("GET", "/transaction_summary", AdvancedTradeServer._get_transaction_summary),
    _route("GET", "/key_permissions", AdvancedTradeServer._get_key_permissions, "auth"),
    _route("GET", "/intx/positions/{portfolio_uuid}", AdvancedTradeServer._get_intx_positions),
    _route("GET", "/intx/positions/{portfolio_uuid}/{symbol}", AdvancedTradeServer._get_intx_position),
    _route("GET", "/intx/portfolio/{portfolio_uuid}", AdvancedTradeServer._get_intx_portfolio),
    _route("GET", "/intx/balances/{portfolio_uuid}", AdvancedTradeServer._get_intx_balances),
)


def _replay_bars(product_ids: Iterable[str]) -> dict[str, list[Candle]]:
    """The last HISTORY_BARS one-minute bars of the bundled replay per product."""
    replay = ReplayMarketData()
    replay.seek(replay.bars - 1)
    return {product_id: replay.history(product_id, HISTORY_BARS) for product_id in product_ids}


# --------------------------------------------------------------------------------------------------- command line


def _parse_balance(text: str) -> tuple[str, Decimal]:
    currency, _, amount = text.partition("=")
    try:
        return currency.strip().upper(), Decimal(amount)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"balance {text!r} is not CURRENCY=AMOUNT") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trader.testing.advanced_trade_server",
        description="Serve a local Coinbase Advanced Trade v3 REST API over HTTPS until SIGTERM or SIGINT.",
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="where cdp_key.json, cert.pem, server.json go")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see server.json)")
    parser.add_argument("--key-name", default="organizations/local-test/apiKeys/advanced-trade-server")
    parser.add_argument(
        "--balance", type=_parse_balance, action="append", default=[], metavar="CUR=AMOUNT", help="repeatable"
    )
    parser.add_argument("--derivatives", action="store_true", help="serve the INTX perpetuals endpoints")
    args = parser.parse_args(argv)

    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    key = generate_cdp_key(args.key_name)
    key_file = key.write_key_file(state_dir / "cdp_key.json")
    balances: dict[str, Decimal] = {"USD": Decimal("100000"), "BTC": ZERO, "ETH": ZERO}
    balances.update(dict(args.balance))
    server = AdvancedTradeServer(
        key_name=key.name,
        public_key_pem=key.public_key_pem,
        cert_dir=state_dir,
        host=args.host,
        port=args.port,
        balances=balances,
        derivatives=args.derivatives,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    info_path = state_dir / "server.json"
    try:
        info = {"base_url": server.base_url, "ca_file": str(server.ca_file), "key_file": str(key_file)}
        partial = info_path.with_name(f".server.json.{os.getpid()}")
        partial.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, info_path)
        print(f"Advanced Trade test server on https://{server.base_url} (state in {state_dir})", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        info_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
