"""perps-bot websocket test | monitor | stability | capture: the runbook's WebSocket checks, on trader/coinbase/ws.py.

    perps-bot websocket test [--channels heartbeats,ticker] [--duration 10]   # first message per channel, exit 0/1
    perps-bot websocket monitor --interval 5 [--duration N]                  # a status line every interval
    perps-bot websocket stability --duration 300                             # reconnects, gaps, lag p50/p99
    perps-bot websocket capture --duration 60 --save ws_dump.json            # raw messages, one JSON object a line

Market channels go to COINBASE_WS_URL for TRADING_SYMBOLS; `user` and `futures_balance_summary` to
COINBASE_WS_USER_URL with a JWT from the configured CDP key (the runbook's test_websocket). COINBASE_CA_FILE verifies
wss://. Bad input (an unknown action or channel, a bad URL, a duration or interval <= 0, user channels without a
key) is one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from deployments.cli.output import say
from trader.coinbase.ws import (
    USER_CHANNELS,
    FeedStats,
    Subscription,
    WsFeed,
    channel_name,
    ws_jwt_maker,
    ws_ssl_context,
)
from trader.errors import ConfigError
from trader.settings import Settings

WEBSOCKET_ACTIONS = ("test", "monitor", "stability", "capture")
DEFAULT_CHANNELS = "heartbeats,ticker"
DEFAULTS = {"test": 10.0, "stability": 300.0, "capture": 60.0}


def websocket_command(settings: Settings, args: argparse.Namespace) -> int:
    action = args.action
    if action not in WEBSOCKET_ACTIONS:
        got = f" (got {action!r})" if action else ""
        raise ConfigError(f"websocket: expected one of {', '.join(WEBSOCKET_ACTIONS)}{got}")
    duration = args.duration if args.duration is not None else DEFAULTS.get(action)
    if duration is not None and duration <= 0:
        raise ConfigError(f"--duration: must be more than 0 seconds (got {duration:g})")
    interval = args.interval if args.interval is not None else 5.0
    if interval <= 0:
        raise ConfigError(f"--interval: must be more than 0 seconds (got {interval:g})")
    if action == "capture" and args.save is None:
        raise ConfigError("websocket capture: give --save FILE (one JSON object a line)")
    channels = [channel_name(c.strip()) for c in (args.channels or DEFAULT_CHANNELS).split(",") if c.strip()]
    if not channels:
        raise ConfigError("--channels: name at least one channel (e.g. heartbeats,ticker)")
    session = Session(settings, channels)  # every setting checked (a user channel needs a key) before a file opens
    with ExitStack() as stack:
        if action == "capture":
            session.dump = stack.enter_context(Path(args.save).open("w", encoding="utf-8"))
        stack.callback(session.stop)
        session.start()
        if action == "test":
            return session.test(duration or DEFAULTS["test"])
        if action == "monitor":
            return session.monitor(interval, duration)
        assert duration is not None
        session.run_for(duration, f"websocket {action}")
        session.stop()  # nothing arrives after the summary: its counts are the dump's
        say(session.summary())
        if session.dump is not None:
            say(f"saved {session.saved} messages to {args.save}")
        return 0 if session.ever_connected() else 1


class Session:
    """The feeds a command opened (market, and user when asked), what arrived first on each channel, the dump."""

    def __init__(self, settings: Settings, channels: list[str]) -> None:
        self.channels = channels
        self.dump: IO[str] | None = None  # capture's file: one JSON object a line
        self.saved = 0
        self.started = time.monotonic()
        self.first: dict[str, float] = {}
        self._arrived = threading.Condition()  # notified on every message
        market = [Subscription(c, tuple(settings.symbols) if c != "heartbeats" else ()) for c in channels]
        market = [s for s in market if s.channel not in USER_CHANNELS]
        user = [Subscription(c) for c in channels if c in USER_CHANNELS]
        self.feeds: list[WsFeed] = []
        ca_file = settings.coinbase_ca_file
        if market:
            url = settings.coinbase_ws_url
            self.feeds.append(WsFeed(url, market, self._on_message, ssl_context=ws_ssl_context(url, ca_file)))
        if user:
            url, jwt = settings.coinbase_ws_user_url, ws_jwt_maker(settings, f"--channels: {', '.join(USER_CHANNELS)}")
            context = ws_ssl_context(url, ca_file)
            self.feeds.append(WsFeed(url, user, self._on_message, jwt=jwt, ssl_context=context, name="ws-user-feed"))

    def start(self) -> None:
        for feed in self.feeds:
            feed.start()

    def stop(self) -> None:
        for feed in self.feeds:
            feed.stop()

    def _on_message(self, message: dict[str, Any]) -> None:
        channel = str(message.get("channel"))
        with self._arrived:
            self.first.setdefault(channel, time.monotonic() - self.started)
            if self.dump is not None:
                self.dump.write(json.dumps(message, separators=(",", ":")) + "\n")
                self.saved += 1
            self._arrived.notify_all()

    def ever_connected(self) -> bool:
        return all(sum(feed.stats.messages.values()) > 0 for feed in self.feeds)  # a message: it connected

    # --- the actions --------------------------------------------------------------------------------------------

    def test(self, timeout: float) -> int:
        """Wait for a first message on every channel; one line per channel; 0 when all arrived."""
        with self._arrived:
            self._arrived.wait_for(lambda: all(c in self.first for c in self.channels), timeout)
        for channel in self.channels:
            if channel in self.first:
                say(f"{channel}: first message after {self.first[channel]:.2f} s")
            else:
                say(f"{channel}: no message within {timeout:g} s")
        return 0 if all(c in self.first for c in self.channels) else 1

    def monitor(self, interval: float, duration: float | None) -> int:
        """A status line every interval until Ctrl-C (or --duration)."""
        end = None if duration is None else time.monotonic() + duration
        try:
            while end is None or time.monotonic() < end:
                time.sleep(interval if end is None else max(0.0, min(interval, end - time.monotonic())))
                say(f"{time.strftime('%H:%M:%S')} {self.status()}")
        except KeyboardInterrupt:
            pass
        return 0 if self.ever_connected() else 1

    def run_for(self, duration: float, what: str) -> None:
        """Run `duration` seconds with a progress bar (Ctrl-C ends it early, with the summary)."""
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"))
        with Progress(*columns, TimeRemainingColumn(), transient=True) as progress:
            task = progress.add_task(what, total=duration, status=self.status())
            try:
                while (elapsed := time.monotonic() - self.started) < duration:
                    time.sleep(min(0.5, duration - elapsed))
                    progress.update(task, completed=time.monotonic() - self.started, status=self.status())
            except KeyboardInterrupt:
                pass

    # --- what it prints -----------------------------------------------------------------------------------------

    def _merged(self) -> FeedStats:
        return FeedStats.merge(feed.stats for feed in self.feeds)

    def status(self) -> str:
        stats = self._merged()
        last = "never" if stats.last_message is None else f"{time.monotonic() - stats.last_message:.1f} s ago"
        return (
            f"{'connected' if stats.connected else 'DISCONNECTED'}; messages {sum(stats.messages.values())} "
            f"({_counts(stats.messages)}); reconnects {stats.reconnects}; gaps {sum(stats.gaps.values())}; "
            f"lag p50 {_ms(stats.lag_seconds, 0.5)}; last message {last}"
        )

    def summary(self) -> str:
        stats = self._merged()
        return (
            f"{time.monotonic() - self.started:.0f} s: messages {sum(stats.messages.values())} "
            f"({_counts(stats.messages)}); "
            f"reconnects {stats.reconnects}; disconnects {len(stats.disconnects)}; gaps {sum(stats.gaps.values())} "
            f"({_counts(stats.gaps)}); lag p50 {_ms(stats.lag_seconds, 0.5)}, p99 {_ms(stats.lag_seconds, 0.99)}; "
            f"handler errors {stats.handler_errors}"
        )


def _counts(counter: Counter[str]) -> str:
    """Counts by channel, e.g. "heartbeats 14, ticker 3"; "none" when there are none."""
    return ", ".join(f"{c} {n}" for c, n in sorted(counter.items())) or "none"


def _ms(samples: Any, q: float) -> str:
    values = sorted(samples)
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0] * 1000:.0f} ms"
    return f"{statistics.quantiles(values, n=100, method='inclusive')[round(q * 100) - 1] * 1000:.0f} ms"
