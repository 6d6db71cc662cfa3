"""One supervised Coinbase Advanced Trade WebSocket connection: subscribe, watch, reconnect, never go quiet.

A `WsFeed` owns one connection (the market data endpoint or the user endpoint) in a thread of its own and keeps
it alive until stop():

- Every subscription is sent as its own subscribe message ({"type", "channel", "product_ids", "jwt"}) with a JWT
  made fresh for that message (WebSocket JWTs live 120 s), on the first connect and on every reconnect: heartbeats
  and product-less channels (user for all products) included, which the SDK's own reconnect skips.
- A watchdog: no message for `stale_seconds` (heartbeats arrive every second when subscribed) closes the connection
  and reconnects. Any close reconnects, 1001 "going away" included (the SDK treats it as final).
- Reconnects wait a jittered exponential backoff (`backoff_base` doubling up to `backoff_max`, each wait drawn
  between half and all of it), reset once a connection has delivered a message.
- sequence_num counts the messages of one connection across all its channels, from 0 (Coinbase numbers them so, and
  has no retransmit): a jump is a gap, counted for the channel of the message after it and reported to `on_gap`,
  whose job is a REST resync; an older or repeated number is dropped. Every reconnect after the first connect is
  reported to `on_reconnect` (the same resync: nothing arrived while the socket was down).
- The handler runs in the feed's thread for every message of a subscribed channel; an exception it raises is logged
  at ERROR with its traceback and counted (`handler_errors`), and the feed carries on: never swallowed silently.
- An {"type": "error"} answer (a refused JWT, an unknown channel) is logged and the connection retried with backoff.
- With `clock_skew` (local minus the exchange's clock, e.g. from GET /time), every connect measures it first: JWTs
  carry nbf = the local clock, so a clock ahead by more than MAX_CLOCK_SKEW_SECONDS is a warning that names it.

`stats` holds what the runbook's guards and metrics read: connected (a message arrived on the open connection),
connects, reconnects, disconnect times, gaps (per channel), messages (per channel), handler errors, the last
message's monotonic time and the lag of each message (its `timestamp` to its arrival). JWTs and keys are never
logged.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trader.errors import ConfigError
from trader.settings import Settings, ws_url_problem

if TYPE_CHECKING:
    from trader.coinbase.http import KeySlot

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

MARKET_CHANNELS = ("heartbeats", "candles", "status", "ticker", "ticker_batch", "level2", "market_trades")
USER_CHANNELS = ("user", "futures_balance_summary")
CHANNELS = MARKET_CHANNELS + USER_CHANNELS
MAX_CLOCK_SKEW_SECONDS = 1.0  # a JWT's nbf is the local clock: ahead of the exchange by more, it can be refused
LAG_SAMPLES = 1000
DISCONNECTS_KEPT = 1000  # enough for the per-hour guard (10 is critical)
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds, for ws_message_lag_seconds
WIRE_CHANNELS = {"level2": "l2_data"}  # a subscription whose messages carry another channel name

Handler = Callable[[dict[str, Any]], None]


def ws_url(value: str, field_name: str) -> str:
    """`value` when the feed may use it (ws_url_problem), else ConfigError naming `field_name`."""
    problem = ws_url_problem(value)
    if problem is not None:
        raise ConfigError(f"{field_name}={value!r} {problem}")
    return value.strip()


def ws_ssl_context(url: str, ca_file: Path | None) -> ssl.SSLContext | None:
    """For wss://: verification against COINBASE_CA_FILE when set, the system's CAs otherwise; None for ws://."""
    if not url.startswith("wss://"):
        return None
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def ws_jwt_maker(settings: Settings, needed_by: str, slot: KeySlot | None = None) -> Callable[[], str]:
    """A fresh WebSocket JWT per subscribe from the account's active CDP key (or `slot`'s); ConfigError naming
    `needed_by` when there is no key. The key stays inside the closure: never logged."""
    from coinbase import jwt_generator
    from trader.coinbase.http import active_key_slot, load_credentials

    credentials = load_credentials(settings, slot or active_key_slot(settings))
    if credentials is None:
        raise ConfigError(f"{needed_by} need a CDP key (COINBASE_KEY_FILE or COINBASE_API_KEY and COINBASE_API_SECRET)")
    name, secret = credentials.name, credentials.private_key.get_secret_value()
    return lambda: str(jwt_generator.build_ws_jwt(name, secret))


def channel_name(value: str) -> str:
    """`value` when Coinbase has that channel, else ConfigError listing the channels (and the likely one)."""
    if value in CHANNELS:
        return value
    close = [c for c in CHANNELS if c.startswith(value) or value.startswith(c)]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown WebSocket channel {value!r}{hint}; channels: {', '.join(CHANNELS)}")


@dataclass(frozen=True)
class Subscription:
    """One channel, for some products or (empty) for all / none."""

    channel: str
    product_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        channel_name(self.channel)


@dataclass
class FeedStats:
    connected: bool = False
    connects: int = 0
    reconnects: int = 0
    failed_attempts: int = 0  # connections that ended (or never opened) without delivering a message
    # wall times (time.time()) a live connection was lost (not stop()), the newest DISCONNECTS_KEPT
    disconnects: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=DISCONNECTS_KEPT))
    gaps: collections.Counter[str] = field(default_factory=collections.Counter)
    messages: collections.Counter[str] = field(default_factory=collections.Counter)
    handler_errors: int = 0
    clock_skew_seconds: float | None = None  # local clock minus the exchange's, measured at the latest connect
    last_message: float | None = None  # time.monotonic() of the newest message
    # time.monotonic() since when no connection delivers (from the start until the first message); None while one does
    down_since: float | None = field(default_factory=time.monotonic)
    lag_seconds: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=LAG_SAMPLES))
    lag_counts: list[int] = field(default_factory=lambda: [0] * len(LAG_BUCKETS))  # cumulative, per LAG_BUCKETS
    lag_sum: float = 0.0
    lag_count: int = 0

    @classmethod
    def merge(cls, parts: Iterable[FeedStats]) -> FeedStats:
        """Several feeds' stats as one (a command's market and user feeds, a bot's exporter): connected when every
        one is, counts added, the newest last message, the earliest down time."""
        parts = list(parts)
        merged = cls(connected=all(p.connected for p in parts))
        merged.down_since = min((p.down_since for p in parts if p.down_since is not None), default=None)
        for part in parts:
            merged.connects += part.connects
            merged.reconnects += part.reconnects
            merged.failed_attempts += part.failed_attempts
            merged.disconnects.extend(part.disconnects)
            merged.gaps.update(part.gaps)
            merged.messages.update(part.messages)
            merged.handler_errors += part.handler_errors
            merged.lag_seconds.extend(part.lag_seconds)
            merged.lag_counts = [a + b for a, b in zip(merged.lag_counts, part.lag_counts, strict=True)]
            merged.lag_sum += part.lag_sum
            merged.lag_count += part.lag_count
        seen = [p.last_message for p in parts if p.last_message is not None]
        merged.last_message = max(seen, default=None)
        return merged

    def observe_lag(self, seconds: float) -> None:
        """One message's lag: kept for quantiles (the newest LAG_SAMPLES) and in the cumulative histogram."""
        self.lag_seconds.append(seconds)
        self.lag_sum += seconds
        self.lag_count += 1
        for i, bound in enumerate(LAG_BUCKETS):
            if seconds <= bound:
                self.lag_counts[i] += 1

    def down_seconds(self, now: float | None = None) -> float:
        """Seconds without a connection that delivers (0 while one does): the feed guard's WebSocket reading."""
        if self.down_since is None:
            return 0.0
        return max((time.monotonic() if now is None else now) - self.down_since, 0.0)

    def disconnects_within(self, seconds: float, now: float | None = None) -> int:
        """Disconnects in the last `seconds` (the runbook counts them per hour)."""
        cutoff = (time.time() if now is None else now) - seconds
        return sum(1 for at in self.disconnects if at >= cutoff)


class _Refused(Exception):
    """The server answered a subscribe with an error message."""


class _Stale(Exception):
    """No message within the watchdog's window."""


class WsFeed:
    """A supervised connection to `url` carrying `subscriptions`; start() it, read `stats`, stop() it."""

    def __init__(
        self,
        url: str,
        subscriptions: Iterable[Subscription],
        handler: Handler,
        *,
        jwt: Callable[[], str] | None = None,
        on_reconnect: Callable[[], None] | None = None,
        on_gap: Callable[[str, int, int], None] | None = None,
        clock_skew: Callable[[], float] | None = None,
        stale_seconds: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        open_timeout: float = 10.0,
        ssl_context: Any = None,
        name: str = "ws-feed",
    ) -> None:
        self.url = ws_url(url, "url")
        self.subscriptions = tuple(subscriptions)
        if not self.subscriptions:
            raise ConfigError("a WebSocket feed needs at least one channel")
        self.handler = handler
        self.jwt = jwt
        self.on_reconnect = on_reconnect
        self.on_gap = on_gap
        self.clock_skew = clock_skew
        self.stale_seconds = stale_seconds
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout
        self.ssl_context = ssl_context
        self.name = name
        self.stats = FeedStats()
        self._channels = {WIRE_CHANNELS.get(s.channel, s.channel) for s in self.subscriptions} | {"subscriptions"}
        self._stopping = threading.Event()
        self._kick = threading.Event()  # restart(): cut a backoff wait short
        self._connection: Any = None
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> WsFeed:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def restart(self) -> None:
        """Reconnect now (the feed guard's restart_feed): the open connection is closed, a backoff wait cut short."""
        log.warning("%s %s: restarting the connection", self.name, self.url)
        self._kick.set()
        connection = self._connection
        if connection is not None:
            connection.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._kick.set()
        connection = self._connection
        if connection is not None:
            connection.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_for(self, condition: Callable[[FeedStats], bool], timeout: float) -> bool:
        """Block until `condition(stats)` holds (checked on every message and connection change) or timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self.stats):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    # --- the connection's life ----------------------------------------------------------------------------------

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        attempt = 0
        while not self._stopping.is_set():
            delivered = False
            try:
                delivered = self._session()
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, _Refused, _Stale) as error:
                if not self._stopping.is_set():
                    log.warning("%s %s: %s; reconnecting", self.name, self.url, _describe(error))
            except Exception:  # anything else: said with its traceback, and the feed still reconnects
                log.exception("%s %s: unexpected error; reconnecting", self.name, self.url)
            finally:
                # A connection that delivered and then died (the usual end) is no failed attempt: no backoff.
                delivered = delivered or self.stats.connected
                if self.stats.connected and not self._stopping.is_set():  # lost, not ended by stop()
                    self.stats.disconnects.append(time.time())
                    self.stats.down_since = time.monotonic()
                self.stats.connected = False
                self._connection = None
                self._notify()
            attempt = 0 if delivered else attempt + 1
            if not delivered:
                self.stats.failed_attempts += 1
                self._notify()
            if self._kick.is_set():
                self._kick.clear()
                attempt = 0  # restarted: no backoff
            if attempt and not self._stopping.is_set():
                delay = min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max)
                self._kick.wait(random.uniform(delay / 2, delay))
                self._kick.clear()

    def _session(self) -> bool:
        """One connection: connect, subscribe everything, read until it ends; True when a message arrived."""
        from websockets.sync.client import connect

        self._check_clock()  # before connecting: a server drops a connection that does not subscribe at once
        connection = connect(
            self.url, open_timeout=self.open_timeout, ssl=self.ssl_context, max_size=2**24, close_timeout=2
        )
        self._connection = connection
        delivered = False
        last_sequence: int | None = None
        with connection:
            for subscription in self.subscriptions:
                message: dict[str, Any] = {
                    "type": "subscribe",
                    "channel": subscription.channel,
                    "product_ids": list(subscription.product_ids),
                }
                if self.jwt is not None:
                    message["jwt"] = self.jwt()
                connection.send(json.dumps(message))
            self.stats.connects += 1
            if self.stats.connects > 1:
                self.stats.reconnects += 1
            self._notify()
            if self.stats.connects > 1 and self.on_reconnect is not None:
                self._call("on_reconnect", self.on_reconnect)
            while not self._stopping.is_set():
                try:
                    raw = connection.recv(timeout=self.stale_seconds)
                except TimeoutError:
                    raise _Stale(f"no message in {self.stale_seconds:g} s") from None
                try:
                    message = json.loads(raw)
                except ValueError:
                    log.error("%s: a message that is not JSON was dropped (%d bytes)", self.name, len(raw))
                    continue
                if message.get("type") == "error":
                    raise _Refused(str(message.get("message", "error")))
                channel = str(message.get("channel", ""))
                sequence = message.get("sequence_num")
                if isinstance(sequence, int):
                    if last_sequence is not None and sequence <= last_sequence:
                        continue  # repeated or out of order: already seen or superseded
                    if last_sequence is not None and sequence > last_sequence + 1:
                        self._gap(channel, last_sequence + 1, sequence)
                    last_sequence = sequence
                delivered = True
                self._received(message, channel)
        return delivered

    def _check_clock(self) -> None:
        """At every connect: the local clock against the exchange's (JWTs carry nbf = local now); a skew beyond
        MAX_CLOCK_SKEW_SECONDS is a warning naming it, a failed check is said and the connect goes on."""
        if self.clock_skew is None:
            return
        try:
            skew = self.stats.clock_skew_seconds = float(self.clock_skew())
        except Exception as error:  # the exchange's clock unreachable: the subscribe itself will tell
            log.warning("%s: clock skew not checked (%s)", self.name, error)
            return
        if abs(skew) > MAX_CLOCK_SKEW_SECONDS:
            side = "ahead of" if skew > 0 else "behind"
            log.warning(
                "%s: the local clock is %.2f s %s the exchange's (more than %g s): JWTs may be refused; sync the clock "
                "(chrony/ntpd)",
                self.name,
                abs(skew),
                side,
                MAX_CLOCK_SKEW_SECONDS,
            )

    def _gap(self, channel: str, expected: int, got: int) -> None:
        self.stats.gaps[channel] += 1
        log.warning("%s: sequence gap on %s: expected %d, got %d", self.name, channel, expected, got)
        on_gap = self.on_gap
        if on_gap is not None:
            self._call("on_gap", lambda: on_gap(channel, expected, got))

    def _received(self, message: dict[str, Any], channel: str) -> None:
        self.stats.connected = True  # from the connection's first message: the server took the subscribes
        self.stats.down_since = None
        self.stats.messages[channel] += 1
        self.stats.last_message = time.monotonic()
        stamp = message.get("timestamp")
        if isinstance(stamp, str):
            with contextlib.suppress(ValueError):
                self.stats.observe_lag(time.time() - datetime.fromisoformat(stamp).timestamp())
        if channel in self._channels:
            self._call(f"handler ({channel})", lambda: self.handler(message))
        self._notify()

    def _call(self, what: str, function: Callable[[], object]) -> None:
        try:
            function()
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s: %s raised; the feed carries on", self.name, what)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()


def _describe(error: BaseException) -> str:
    from websockets.exceptions import ConnectionClosed

    if isinstance(error, ConnectionClosed):
        frame = error.rcvd
        return f"closed ({frame.code} {frame.reason})" if frame is not None else "connection lost (no close frame)"
    if isinstance(error, _Refused):
        return f"refused by the server: {error}"
    return str(error) or type(error).__name__
