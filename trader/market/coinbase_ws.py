"""Live market data with the best bid/ask over Coinbase's WebSocket ticker (MARKET_DATA=coinbase-ws).

The closed one-minute bars still come from the public REST candles (CoinbaseLiveMarketData: fetched once a bar has
closed; Coinbase's WebSocket candles are five-minute buckets). The touch comes from the `ticker` channel of a
supervised WsFeed (trader/coinbase/ws.py, with `heartbeats` to keep it open): every ticker message replaces that
product's (best_bid, best_ask). While a product's last ticker is younger than `quote_max_age` seconds and the feed
is connected, refresh() reads no product book over REST; when the socket is down or quiet, REST polling carries on
as before, every cycle, until the ticker is back. `feed.stats` is what the WebSocket guards and metrics read.

`level2` keeps each product's order book (a snapshot per connection, then absolute `new_quantity` updates, "0"
removing a level) for the paper exchange's fills: `taker_price` walks it for the average price of a market order's
size. A book is used only from its snapshot on the open connection: a reconnect waits for the new snapshot, and a
sequence gap (a missed update: Coinbase has no retransmit) drops every book and reconnects for fresh snapshots.
Without a live book, or without the depth, the paper exchange prices from the touch plus its slippage.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from trader.coinbase.http import parse_server_time
from trader.coinbase.ws import Subscription, WsFeed, ws_ssl_context
from trader.domain import Side
from trader.market.coinbase_live import CoinbaseLiveMarketData
from trader.settings import Settings

QUOTE_MAX_AGE_SECONDS = 10.0


class CoinbaseWsMarketData(CoinbaseLiveMarketData):
    """CoinbaseLiveMarketData whose best bid/ask follows the WebSocket ticker; close() stops the feed."""

    def __init__(
        self,
        client: Any,
        symbols: list[str],
        *,
        ws_url: str,
        ssl_context: ssl.SSLContext | None = None,
        quote_max_age: float = QUOTE_MAX_AGE_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        **options: Any,
    ) -> None:
        self.quote_max_age = quote_max_age
        self._ticks: dict[str, tuple[Decimal, Decimal, float]] = {}  # symbol -> bid, ask, monotonic arrival
        self._ticks_lock = threading.Lock()
        self._book_read_at: dict[str, float] = {}  # symbol -> monotonic time of its latest REST book read
        self._books: dict[str, dict[str, dict[Decimal, Decimal]]] = {}  # symbol -> bid/offer -> price -> quantity
        subscriptions = [
            Subscription("heartbeats"),
            Subscription("ticker", tuple(symbols)),
            Subscription("level2", tuple(symbols)),
        ]
        self.feed = WsFeed(
            ws_url,
            subscriptions,
            self._on_message,
            on_reconnect=self._drop_books,
            on_gap=self._on_gap,
            ssl_context=ssl_context,
            clock_skew=lambda: time.time() - parse_server_time(client.get_unix_time()).timestamp(),
            name="ws-market-data",
        )
        self.feed.start()
        try:
            super().__init__(client, symbols, clock=clock, **options)
        except BaseException:
            self.feed.stop()
            raise

    @classmethod
    def _options(cls, settings: Settings) -> dict[str, Any]:
        url = settings.coinbase_ws_url
        return {"ws_url": url, "ssl_context": ws_ssl_context(url, settings.coinbase_ca_file)}

    def close(self) -> None:
        self.feed.stop()

    def restart(self) -> None:
        """The feed guard's restart_feed: reconnect the WebSocket now and refetch over REST."""
        self.feed.restart()
        self.refresh()

    def quote(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        """The live ticker's touch; else the newer of the last ticker and the last REST book (the socket may have
        dropped since this cycle's refresh skipped the book: an older REST book is not the better answer)."""
        tick = self._live_tick(symbol)
        if tick is not None:
            self._rows(symbol)  # an unknown symbol still raises
            return tick
        rest = super().quote(symbol)
        with self._ticks_lock:
            last = self._ticks.get(symbol)
        if last is not None and (rest is None or last[2] > self._book_read_at.get(symbol, float("-inf"))):
            return last[0], last[1]
        return rest

    def taker_price(self, symbol: str, side: Side, quantity: Decimal) -> Decimal | None:
        """The average price of taking `quantity` from the live level2 book: the offers upwards for a buy, the bids
        downwards for a sell; None without a live book or without the depth."""
        if quantity <= 0 or not self.feed.stats.connected:
            return None
        with self._ticks_lock:
            book = self._books.get(symbol)
            levels = sorted(book["offer"].items()) if book and side == Side.BUY else None
            if book and side == Side.SELL:
                levels = sorted(book["bid"].items(), reverse=True)
        left, cost = quantity, Decimal(0)
        for price, size in levels or ():
            taken = min(left, size)
            cost += taken * price
            left -= taken
            if left <= 0:
                return cost / quantity
        return None

    def _drop_books(self) -> None:
        with self._ticks_lock:
            self._books.clear()

    def _on_gap(self, channel: str, expected: int, got: int) -> None:
        """A missed message may be a book update: every book is dropped and the connection made again, for fresh
        snapshots (the touch comes back with the ticker's)."""
        self._drop_books()
        self.feed.restart()

    def _book_wanted(self, symbol: str) -> bool:
        if self._live_tick(symbol) is not None:
            return False
        self._book_read_at[symbol] = time.monotonic()  # refresh() reads it now
        return True

    def live_quote(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        """The ticker's touch while it is live (connected, younger than quote_max_age), else None: the live broker
        then reads the book over REST itself."""
        return self._live_tick(symbol)

    def _live_tick(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        """The ticker's (bid, ask) while the feed is connected and the tick younger than quote_max_age."""
        with self._ticks_lock:
            tick = self._ticks.get(symbol)
        if tick is None or not self.feed.stats.connected or time.monotonic() - tick[2] > self.quote_max_age:
            return None
        return tick[0], tick[1]

    def _on_message(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if channel == "l2_data":
            self._on_level2(message)
        if channel != "ticker":
            return
        now = time.monotonic()
        for event in message.get("events") or ():
            for ticker in event.get("tickers") or ():
                try:
                    bid, ask = Decimal(str(ticker["best_bid"])), Decimal(str(ticker["best_ask"]))
                except (KeyError, InvalidOperation):
                    continue  # a ticker without a usable touch: the REST book stays the source for it
                if 0 < bid < ask:
                    with self._ticks_lock:
                        self._ticks[str(ticker.get("product_id"))] = (bid, ask, now)

    def _on_level2(self, message: dict[str, Any]) -> None:
        with self._ticks_lock:
            for event in message.get("events") or ():
                symbol = str(event.get("product_id"))
                if event.get("type") == "snapshot":
                    self._books[symbol] = {"bid": {}, "offer": {}}
                book = self._books.get(symbol)
                if book is None:
                    continue  # an update before this connection's snapshot: the snapshot will hold it
                for level in event.get("updates") or ():
                    try:
                        side = {"bid": "bid", "offer": "offer", "ask": "offer"}[str(level["side"])]
                        price, quantity = Decimal(str(level["price_level"])), Decimal(str(level["new_quantity"]))
                    except (KeyError, InvalidOperation):
                        continue
                    if quantity > 0:
                        book[side][price] = quantity
                    else:
                        book[side].pop(price, None)
