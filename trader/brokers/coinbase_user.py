"""The account's order updates over Coinbase's WebSocket `user` channel (ORDER_UPDATES=coinbase-ws).

A `UserOrderStream` owns one supervised WsFeed (trader/coinbase/ws.py) on COINBASE_WS_USER_URL carrying `heartbeats`
and `user` for all products. Its thread only collects; the bot's thread applies (TradingBot._apply_order_updates):

- Each order of a snapshot or an update replaces the one kept for its order id unless it is older (less filled, or
  open again after a final status): a snapshot sent after an update, or the same update twice, changes nothing.
  Snapshot batches (Coinbase sends the open orders 50 to a message) are orders like any other.
- The channel carries cumulative figures, not executions: an order filled further tells the bot to read its fills
  over REST at once (trade ids, the one idempotency key of the ledger's fills); status changes are applied as they
  arrive.
- Coinbase has no retransmit, so a sequence gap, and every (re)connect once its subscription is live (the first
  user snapshot after the connect: what changed before it is in the REST answer, what changes after it arrives on
  the socket), ask for a resync: open orders and fills since the last one seen, over REST, before the bot sends
  another order.
- `wake` is set on every change, so the bot's wait between cycles ends at once: a fill reaches the ledger in the
  time of one REST read, not one cycle. While the socket is down the bot's REST polling goes on as before.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from trader.brokers.coinbase_wire import order_from_user_channel
from trader.coinbase.ws import Subscription, WsFeed, ws_jwt_maker, ws_ssl_context
from trader.domain import Order
from trader.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class OrderUpdates:
    """What the stream collected since the bot last took: the newest state of each order, and whether a resync
    (REST: open orders, fills since the cursor) is due first."""

    orders: list[Order] = field(default_factory=list)
    resync: bool = False
    filled_further: set[str] = field(default_factory=set)  # order ids whose cumulative quantity grew


class UserOrderStream:
    """The supervised `user` channel of one account; start() it, take() what arrived, stop() it."""

    def __init__(
        self,
        url: str,
        jwt: Any,
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock_skew: Any = None,
        stale_seconds: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, Order] = {}
        self._filled: dict[str, Decimal] = {}  # order id -> cumulative quantity last reported
        self._filled_further: set[str] = set()
        self._resync = False
        self._live = False  # the current connection's subscription delivered its snapshot
        self.updates_received = 0
        self.resyncs_asked = 0
        self.feed = WsFeed(
            url,
            [Subscription("heartbeats"), Subscription("user")],
            self._on_message,
            jwt=jwt,
            on_reconnect=self._on_connect,
            on_gap=self._on_gap,
            clock_skew=clock_skew,
            stale_seconds=stale_seconds,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            ssl_context=ssl_context,
            name="ws-user-orders",
        )

    @classmethod
    def from_settings(cls, settings: Settings, clock_skew: Any = None) -> UserOrderStream:
        """The stream on COINBASE_WS_USER_URL with a JWT per subscribe from the configured CDP key."""
        url = settings.coinbase_ws_user_url
        return cls(
            url,
            ws_jwt_maker(settings, "ORDER_UPDATES=coinbase-ws"),
            ssl_context=ws_ssl_context(url, settings.coinbase_ca_file),
            clock_skew=clock_skew,
        )

    def start(self) -> UserOrderStream:
        self.feed.start()
        return self

    def stop(self) -> None:
        self.feed.stop()

    @property
    def connected(self) -> bool:
        return self.feed.stats.connected

    def use_jwt(self, jwt: Any) -> None:
        """Subscribe with another key's JWTs from now on (key rotation): the connection is made again with them."""
        self.feed.jwt = jwt
        self.feed.restart()

    def take(self) -> OrderUpdates:
        """Everything collected since the last take, oldest order first; clears `wake`."""
        with self._lock:
            self.wake.clear()
            updates = OrderUpdates(list(self._pending.values()), self._resync, self._filled_further)
            self._pending = {}
            self._filled_further = set()
            self._resync = False
        return updates

    def ask_resync(self) -> None:
        """A resync is due (the bot's own REST resync failed: it asks again for the next wake)."""
        with self._lock:
            self._resync = True
            self.resyncs_asked += 1
        self.wake.set()

    # --- the feed's thread --------------------------------------------------------------------------------------

    def _on_connect(self) -> None:
        with self._lock:
            self._live = False  # the resync waits for this connection's snapshot

    def _on_gap(self, channel: str, expected: int, got: int) -> None:
        log.warning("user order stream: sequence gap on %s (%d -> %d): resync over REST", channel, expected, got)
        self.ask_resync()

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("channel") != "user":
            return
        at = _stamp(message.get("timestamp"))
        changed = False
        with self._lock:
            for event in message.get("events") or ():
                if event.get("type") == "snapshot" and not self._live:
                    self._live = True
                    self._resync = True  # the first snapshot of a connection: its subscription is live
                    self.resyncs_asked += 1
                    changed = True
                for raw in event.get("orders") or ():
                    changed = self._keep(order_from_user_channel(raw), at) or changed
        if changed:
            self.wake.set()

    def _keep(self, order: Order, at: datetime | None) -> bool:
        """Keep `order` unless what is kept (or was last reported) is newer; True when kept."""
        self.updates_received += 1
        kept = self._pending.get(order.order_id)
        last_filled = self._filled.get(order.order_id, Decimal(0))
        if order.filled_quantity < last_filled:
            return False  # older than what was reported already
        if kept is not None and kept.status.is_terminal and not order.status.is_terminal:
            return False
        if order.filled_quantity > last_filled:
            self._filled_further.add(order.order_id)
            self._filled[order.order_id] = order.filled_quantity
        if order.status.is_terminal:  # nothing newer can follow on this connection: forget its quantity
            self._filled.pop(order.order_id, None)
        self._pending[order.order_id] = replace(order, updated_at=at) if at is not None else order
        return True


def _stamp(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
