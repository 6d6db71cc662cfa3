"""The Prometheus exporter and /health endpoint of one bot process, and the standalone --metrics-file exporter.

BotMetrics keeps every metric in its own CollectorRegistry (never prometheus_client's global one), so two
bots, or a bot and its tests, in one process never collide. Every perps_bot_* series carries an `account` label
naming the bot's account (ACCOUNT), so one Prometheus scraping many bots tells them apart and alert rules can
aggregate `by (account)`. Counters and histograms are prometheus_client's
own (thread-safe); the gauges come from one collector that reads the last CycleTelemetry under a lock at
scrape time, so ages (last cycle, last checkpoint, market data) grow between cycles.

A gauge whose value is not known yet (None in the telemetry, no cycle or checkpoint recorded) is absent from
the scrape rather than NaN: `absent(perps_bot_error_rate_pct)` finds it, and NaN never silently fails a
comparison in an alert rule.

write_metrics_file(PATH) writes the text exposition to PATH and the /health JSON to PATH.health.json beside
it, each atomically (temporary file in the same folder, then os.replace). serve_metrics_file(PATH) serves
both for when the bot runs elsewhere; its /health says "stale" (HTTP 503) when PATH stopped being updated, and
its own two gauges (file age, stale) carry the account the file's health JSON names.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import shutil
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, cast
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from trader.account_names import DEFAULT_ACCOUNT
from trader.coinbase import ratelimit
from trader.coinbase.ws import LAG_BUCKETS, FeedStats, WsFeed
from trader.errors import ConfigError
from trader.fsio import atomic_write
from trader.metrics.telemetry import TRADING_STATES, CycleTelemetry

log = logging.getLogger(__name__)

INCIDENTS_MAX_AGE_SECONDS = 10.0  # open incidents are read from the ledger at most this often
SEVERITIES = ("SEV-1", "SEV-2", "SEV-3")

HealthStatus = Literal["starting", "healthy", "degraded", "halted", "unhealthy", "stale"]
# /health answers HTTP 503 for these and 200 for the rest.
UNHEALTHY_STATUSES: frozenset[str] = frozenset({"unhealthy", "stale"})
DEFAULT_STALE_AFTER_SECONDS = 180.0  # three 60 s cycles
UNKNOWN_ACCOUNT = "unknown"  # the standalone exporter before any health JSON named the file's account
GUARD_LEVEL_VALUE: dict[str, int] = {"ok": 0, "warning": 1, "critical": 2}
TRIP_LEVELS: tuple[str, ...] = ("warning", "critical")

API_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RECOVERY_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Fine around the 20 ms p99 goal of a 1 s cycle (docs/performance.md): a quantile lands between two bounds.
CYCLE_BUCKETS: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.1, 0.25, 0.5, 1.0)
CYCLE_BUCKETS += (2.5, 5.0, 10.0, 30.0, 60.0)

_GAUGES: dict[str, str] = {
    "perps_bot_up": "1 while the bot runs, 0 after it stopped.",
    "perps_bot_uptime_seconds": "Seconds since the bot's metrics were created.",
    "perps_bot_trading_state": "1 for the current trading state (trading, reduce_only, halted), 0 for the others.",
    "perps_bot_position_count": "Open positions after the last cycle.",
    "perps_bot_daily_pnl_pct": "Today's profit and loss in percent of the day's starting equity.",
    "perps_bot_balance": "Account equity in the quote currency after the last cycle.",
    "perps_bot_error_rate_pct": "Recent API error rate in percent (absent until enough calls).",
    "perps_bot_order_success_pct": "Recent order success rate in percent (absent until enough orders).",
    "perps_bot_market_data_age_seconds": "Age of the newest market data, growing until the next cycle.",
    "perps_bot_last_data_update_timestamp_seconds": "Unix time of the newest candle.",
    "perps_bot_guard_level": "Each guard's level: 0 ok, 1 warning, 2 critical.",
    "perps_bot_guard_reading": "Each guard's last reading, the value its warning and critical thresholds compare.",
    "perps_bot_disk_free_ratio": "Free space of the state folder's filesystem, 0 to 1.",
    "perps_bot_funding_rate": "Each perpetual-style future's funding rate now (derivatives on).",
    "perps_bot_open_incidents": "Open incidents of the account by severity (SEV-1, SEV-2, SEV-3).",
    "perps_bot_flow_failing": "1 for each runbook flow whose last run failed or crashed (its incident is open).",
    "perps_bot_last_cycle_age_seconds": "Seconds since the last finished cycle.",
    "perps_bot_last_checkpoint_age_seconds": "Seconds since the last state checkpoint.",
}


class MetricsSource(Protocol):
    """What MetricsServer serves: the text exposition for /metrics and the JSON for /health."""

    def render(self) -> bytes: ...

    def health(self) -> dict[str, Any]: ...


class _GaugeCollector:
    """Adapts a function returning metric families to prometheus_client's Collector protocol."""

    def __init__(self, families: Callable[[bool], list[Metric]]) -> None:
        self._families = families

    def describe(self) -> list[Metric]:
        return self._families(False)

    def collect(self) -> list[Metric]:
        return self._families(True)


def _rate_limit_families(account: str) -> Callable[[bool], list[Metric]]:
    """The Coinbase rate limiter's waits, per scope (private per key, public per IP), over this process, labelled
    with the exporting bot's account (one bot per process: one trading-bot/<account> deployment each)."""

    def families(with_samples: bool) -> list[Metric]:
        waits = CounterMetricFamily(
            "perps_bot_rate_limit_waits",
            "Coinbase requests that waited for the shared rate limiter.",
            labels=["account", "scope"],
        )
        seconds = CounterMetricFamily(
            "perps_bot_rate_limit_wait_seconds",
            "Seconds Coinbase requests waited for the rate limiter.",
            labels=["account", "scope"],
        )
        if with_samples:
            for scope, (count, waited) in ratelimit.totals().items():
                waits.add_metric([account, scope], count)
                seconds.add_metric([account, scope], waited)
        return [waits, seconds]

    return families


class BotMetrics:
    """All metrics of one bot process in its own CollectorRegistry (never the global one), each series labelled
    with the bot's account."""

    def __init__(
        self,
        *,
        account: str = DEFAULT_ACCOUNT,
        clock: Callable[[], float] = time.time,
        stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
        disk_path: Path | None = None,
        open_incidents: Callable[[], list[tuple[str, str]]] | None = None,
    ) -> None:
        if stale_after_seconds <= 0:
            raise ValueError(f"stale_after_seconds must be above 0, got {stale_after_seconds}")
        if not account.strip():
            raise ValueError("account must name the bot's account (ACCOUNT), got an empty name")
        self.account = account
        self._clock = clock
        self.stale_after_seconds = stale_after_seconds
        self.disk_path = disk_path  # the state folder: its filesystem's free space is exported per scrape
        # (fingerprint, severity) of the account's open incidents (the ledger's), read at most every
        # INCIDENTS_MAX_AGE_SECONDS: flow failures ("flow:<name>") and counts per severity for the alert rules.
        self.open_incidents = open_incidents
        self._incidents_read: tuple[float, list[tuple[str, str]]] | None = None
        self._lock = threading.Lock()
        self._started = clock()
        self._last: CycleTelemetry | None = None
        self._last_cycle_at: float | None = None
        self._last_checkpoint: float | None = None
        self._stopped = False

        self.registry = CollectorRegistry()
        r = self.registry
        # "account" first on every series; the account-only ones are this account's child, present (0) from start.
        self._api_latency = Histogram(
            "perps_bot_api_latency_seconds",
            "Broker and market-data API call latency.",
            ["account", "method"],
            buckets=API_LATENCY_BUCKETS,
            registry=r,
        )
        self._api_calls = Counter("perps_bot_api_calls_total", "API calls made.", ["account", "method"], registry=r)
        self._api_errors = Counter(
            "perps_bot_api_errors_total", "API calls that failed.", ["account", "method"], registry=r
        )
        self._guard_trips = Counter(
            "perps_bot_guard_trips_total",
            "Guards entering warning or critical.",
            ["account", "guard", "level"],
            registry=r,
        )
        self._recovery = Histogram(
            "perps_bot_recovery_duration_seconds",
            "Duration of recoveries (engine, redis, postgres, s3, ...).",
            ["account", "kind"],
            buckets=RECOVERY_BUCKETS,
            registry=r,
        )
        self._cycle_duration = Histogram(
            "perps_bot_cycle_duration_seconds",
            "Duration of one bot cycle.",
            ["account"],
            buckets=CYCLE_BUCKETS,
            registry=r,
        ).labels(account=account)
        self._cycles = Counter("perps_bot_cycles_total", "Cycles finished.", ["account"], registry=r).labels(
            account=account
        )
        self._gate_checks = Counter(
            "perps_bot_data_gate_checks_total", "Market-data gate checks.", ["account"], registry=r
        ).labels(account=account)
        self._gate_failures = Counter(
            "perps_bot_data_gate_failures_total", "Market-data gate failures.", ["account"], registry=r
        ).labels(account=account)
        self._orders = Counter("perps_bot_orders_total", "Orders sent.", ["account"], registry=r).labels(
            account=account
        )
        self._fills = Counter("perps_bot_fills_total", "Fills recorded in the ledger.", ["account"], registry=r).labels(
            account=account
        )
        r.register(_GaugeCollector(self._gauge_families))
        r.register(_GaugeCollector(_rate_limit_families(account)))
        self._ws_feeds: list[WsFeed] = []
        r.register(_GaugeCollector(self._ws_families))

    def attach_ws_feed(self, feed: WsFeed) -> None:
        """Export a WebSocket feed's state (perps_bot_ws_*) and show it in /health."""
        self._ws_feeds.append(feed)

    def _ws_families(self, with_samples: bool) -> list[Metric]:
        """The runbook's WebSocket metrics, per channel where it has one, from the attached feeds' stats."""
        labels = ["account", "channel"]
        connected = GaugeMetricFamily(
            "perps_bot_ws_connected", "1 while the channel's WebSocket connection delivers messages.", labels=labels
        )
        reconnects = CounterMetricFamily(
            "perps_bot_ws_reconnects", "WebSocket reconnects (every channel resubscribed).", labels=["account"]
        )
        gaps = CounterMetricFamily(
            "perps_bot_ws_sequence_gaps", "WebSocket sequence gaps (each followed by a REST resync).", labels=labels
        )
        messages = CounterMetricFamily("perps_bot_ws_messages", "WebSocket messages received.", labels=labels)
        lag = HistogramMetricFamily(
            "perps_bot_ws_message_lag_seconds", "From a message's timestamp to its arrival.", labels=["account"]
        )
        families: list[Metric] = [connected, reconnects, gaps, messages, lag]
        if not with_samples or not self._ws_feeds:
            return families
        for feed in self._ws_feeds:
            stats = feed.stats
            for subscription in feed.subscriptions:
                channel = subscription.channel
                connected.add_metric([self.account, channel], 1.0 if stats.connected else 0.0)
                gaps.add_metric([self.account, channel], stats.gaps[channel])
                messages.add_metric([self.account, channel], stats.messages[channel])
        total = FeedStats.merge(f.stats for f in self._ws_feeds)
        reconnects.add_metric([self.account], total.reconnects)
        buckets = [(f"{bound:g}", count) for bound, count in zip(LAG_BUCKETS, total.lag_counts, strict=True)]
        lag.add_metric([self.account], [*buckets, ("+Inf", total.lag_count)], total.lag_sum)
        return families

    def _ws_health(self) -> dict[str, Any] | None:
        """The sockets' state for /health: connected, reconnects, gaps, seconds since the last message."""
        if not self._ws_feeds:
            return None
        total = FeedStats.merge(f.stats for f in self._ws_feeds)
        last = total.last_message
        return {
            "connected": total.connected,
            "reconnects": total.reconnects,
            "gaps": sum(total.gaps.values()),
            "disconnects_last_hour": total.disconnects_within(3600),
            "last_message_age_seconds": round(time.monotonic() - last, 3) if last is not None else None,
        }

    def observe_api_call(self, method: str, seconds: float, ok: bool) -> None:
        """Count one API call and its latency under its method name."""
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"API call {method!r} took {seconds} s; a duration is finite and at least 0")
        self._api_latency.labels(account=self.account, method=method).observe(seconds)
        self._api_calls.labels(account=self.account, method=method).inc()
        if not ok:
            self._api_errors.labels(account=self.account, method=method).inc()

    def record_cycle(self, t: CycleTelemetry) -> None:
        """Take a finished cycle's telemetry: gauges now show it, counters and the duration histogram add it."""
        now = self._clock()
        with self._lock:
            self._last = t
            self._last_cycle_at = now
        self._cycles.inc()
        self._cycle_duration.observe(max(t.duration_ms, 0.0) / 1000)
        self._gate_checks.inc(t.gate_checked)
        self._gate_failures.inc(t.gate_failed)
        self._orders.inc(t.orders)
        self._fills.inc(t.fills)

    def record_guard_trip(self, guard: str, level: str) -> None:
        """Count a guard entering warning or critical."""
        if level not in TRIP_LEVELS:
            raise ValueError(f"guard {guard!r} tripped at level {level!r}; a trip is one of {', '.join(TRIP_LEVELS)}")
        self._guard_trips.labels(account=self.account, guard=guard, level=level).inc()

    def record_recovery(self, kind: str, seconds: float) -> None:
        """Observe how long one recovery took (kind: engine, redis, postgres, s3, ...)."""
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"recovery {kind!r} took {seconds} s; a duration is finite and at least 0")
        self._recovery.labels(account=self.account, kind=kind).observe(seconds)

    def set_last_checkpoint(self, wall_time: float) -> None:
        """Note when the last checkpoint was written (the constructor's clock); its age is computed per scrape."""
        with self._lock:
            self._last_checkpoint = wall_time

    def mark_stopped(self) -> None:
        """The bot has stopped: perps_bot_up drops to 0 and /health answers unhealthy (503)."""
        with self._lock:
            self._stopped = True

    def _gauge_families(self, with_samples: bool) -> list[Metric]:
        families = {name: GaugeMetricFamily(name, doc, labels=_gauge_labels(name)) for name, doc in _GAUGES.items()}
        if not with_samples:
            return list(families.values())
        with self._lock:
            now = self._clock()
            last, cycle_at, checkpoint = self._last, self._last_cycle_at, self._last_checkpoint
            stopped, started = self._stopped, self._started

        def put(name: str, value: float | None, labels: list[str] | None = None) -> None:
            if value is not None and math.isfinite(value):
                families[name].add_metric([self.account, *(labels or [])], value)

        put("perps_bot_up", 0.0 if stopped else 1.0)
        put("perps_bot_uptime_seconds", max(now - started, 0.0))
        for (severity, flow), count in self._incident_samples(now).items():
            if flow is None:
                put("perps_bot_open_incidents", count, [severity])
            else:
                put("perps_bot_flow_failing", 1.0, [flow])
        if self.disk_path is not None:
            try:
                usage = shutil.disk_usage(self.disk_path)
            except OSError:  # the folder gone: no sample, and the rule on it sees the series absent
                usage = None
            if usage is not None and usage.total > 0:
                put("perps_bot_disk_free_ratio", usage.free / usage.total)
        if checkpoint is not None:
            put("perps_bot_last_checkpoint_age_seconds", max(now - checkpoint, 0.0))
        if last is not None and cycle_at is not None:
            since_cycle = max(now - cycle_at, 0.0)
            for state in TRADING_STATES:
                put("perps_bot_trading_state", 1.0 if state == last.trading_state else 0.0, [state])
            put("perps_bot_position_count", last.position_count)
            put("perps_bot_daily_pnl_pct", last.daily_pnl_pct)
            put("perps_bot_balance", last.balance)
            put("perps_bot_error_rate_pct", last.error_rate_pct)
            put("perps_bot_order_success_pct", last.order_success_pct)
            if last.market_data_age_seconds is not None:
                put("perps_bot_market_data_age_seconds", last.market_data_age_seconds + since_cycle)
            if last.last_data_update is not None:
                put("perps_bot_last_data_update_timestamp_seconds", _as_utc(last.last_data_update).timestamp())
            for guard, level in sorted(last.guard_levels.items()):
                put("perps_bot_guard_level", GUARD_LEVEL_VALUE[level], [guard])
            for guard, reading in sorted(last.guard_readings.items()):
                put("perps_bot_guard_reading", reading, [guard])
            for symbol, rate in sorted(last.funding_rates.items()):
                put("perps_bot_funding_rate", rate, [symbol])
            put("perps_bot_last_cycle_age_seconds", since_cycle)
        return list(families.values())

    def _incident_samples(self, now: float) -> dict[tuple[str, str | None], float]:
        """{(severity, None): open incidents, (severity, flow): 1 per failing flow}; every severity present (0)."""
        if self.open_incidents is None:
            return {}
        cached = self._incidents_read
        if cached is None or now - cached[0] >= INCIDENTS_MAX_AGE_SECONDS:
            try:
                cached = self._incidents_read = (now, self.open_incidents())
            except Exception as error:  # the ledger unreachable: the last reading stands, the scrape goes on
                log.warning("open incidents not read for the metrics: %s", error)
                if cached is None:
                    return {}
        samples: dict[tuple[str, str | None], float] = dict.fromkeys(((s, None) for s in SEVERITIES), 0.0)
        for fingerprint, severity in cached[1]:
            samples[(severity, None)] = samples.get((severity, None), 0.0) + 1
            if fingerprint.startswith("flow:"):
                samples[(severity, fingerprint.removeprefix("flow:"))] = 1.0
        return samples

    def health(self) -> dict[str, Any]:
        """The runbook's /health JSON (status, uptime_seconds, active_positions, balance, last_data_update) plus
        account, trading_state, guards, cycle, last_cycle_age_seconds, last_checkpoint_age_seconds and reason.

        Before the first cycle the per-cycle values are None (guards {}, cycle 0) and status is "starting".
        """
        with self._lock:
            now = self._clock()
            last, cycle_at, checkpoint = self._last, self._last_cycle_at, self._last_checkpoint
            stopped, started = self._stopped, self._started
        status, reason = self._status(now, last, cycle_at, stopped, started)
        return {
            "status": status,
            "uptime_seconds": int(max(now - started, 0.0)),
            "active_positions": last.position_count if last else None,
            "balance": _finite(last.balance) if last else None,
            "last_data_update": _iso_z(last.last_data_update) if last and last.last_data_update else None,
            "account": self.account,
            "trading_state": last.trading_state if last else None,
            "guards": dict(sorted(last.guard_levels.items())) if last else {},
            "cycle": last.cycle if last else 0,
            "last_cycle_age_seconds": round(max(now - cycle_at, 0.0), 3) if cycle_at is not None else None,
            "last_checkpoint_age_seconds": round(max(now - checkpoint, 0.0), 3) if checkpoint is not None else None,
            "reason": reason,
            **({"websocket": ws} if (ws := self._ws_health()) is not None else {}),
        }

    def _status(
        self, now: float, last: CycleTelemetry | None, cycle_at: float | None, stopped: bool, started: float
    ) -> tuple[HealthStatus, str | None]:
        if stopped:
            return "unhealthy", "the bot has stopped"
        quiet = now - (cycle_at if cycle_at is not None else started)
        if quiet > self.stale_after_seconds:
            what = "no cycle finished" if cycle_at is not None else "no cycle recorded since start"
            return "unhealthy", f"{what} for {quiet:.0f} s (stale after {self.stale_after_seconds:.0f} s)"
        if last is None:
            return "starting", "no cycle recorded yet"
        if last.trading_state == "halted":
            return "halted", "trading is halted"
        not_ok = sorted(f"{guard}={level}" for guard, level in last.guard_levels.items() if level != "ok")
        if last.trading_state == "reduce_only" or not_ok:
            parts = (["reduce-only"] if last.trading_state == "reduce_only" else []) + not_ok
            return "degraded", ", ".join(parts)
        return "healthy", None

    def render(self) -> bytes:
        """The Prometheus text exposition of this bot's registry."""
        return generate_latest(self.registry)

    def write_metrics_file(self, path: Path) -> None:
        """Write the text exposition to path and the /health JSON to path.health.json, each atomically."""
        # Health first: the metrics file's modification time is what serve_metrics_file checks for staleness.
        # 0o644: a node_exporter or sidecar under another user must read them.
        atomic_write(health_file_for(path), json.dumps(self.health(), indent=2).encode() + b"\n", mode=0o644)
        atomic_write(path, self.render(), mode=0o644)


def _gauge_labels(name: str) -> list[str]:
    extra = {
        "perps_bot_trading_state": ["state"],
        "perps_bot_guard_level": ["guard"],
        "perps_bot_guard_reading": ["guard"],
        "perps_bot_open_incidents": ["severity"],
        "perps_bot_flow_failing": ["flow"],
        "perps_bot_funding_rate": ["symbol"],
    }
    return ["account", *extra.get(name, [])]


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso_z(moment: datetime) -> str:
    return _as_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def health_file_for(path: Path) -> Path:
    """Where write_metrics_file puts the /health JSON for a --metrics-file path."""
    return path.with_name(path.name + ".health.json")


class MetricsFileSource:
    """The latest --metrics-file and its health JSON, as a MetricsSource for a standalone exporter.

    Its own gauges carry the file's account: `account` when given, else the one the health JSON names (the bot
    writes it), else "unknown" (no health JSON yet).
    """

    def __init__(
        self,
        path: Path,
        *,
        account: str | None = None,
        stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
        clock: Callable[[], float] = time.time,  # compared with the file's modification time: wall clock
    ) -> None:
        if stale_after_seconds <= 0:
            raise ValueError(f"stale_after_seconds must be above 0, got {stale_after_seconds}")
        if account is not None and not account.strip():
            raise ValueError("account must name the bot's account (ACCOUNT), got an empty name")
        self.path = path
        self.account = account
        self.stale_after_seconds = stale_after_seconds
        self._clock = clock
        self._registry = CollectorRegistry()
        self._registry.register(_GaugeCollector(self._file_families))

    def file_age_seconds(self) -> float | None:
        """Seconds since the metrics file was last replaced; None when it does not exist."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        return max(self._clock() - mtime, 0.0)

    def file_account(self) -> str:
        """The served file's account: the one given, else the one its health JSON names, else "unknown"."""
        if self.account is not None:
            return self.account
        try:
            written = json.loads(health_file_for(self.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, unreadable or not JSON: health() says which
            return UNKNOWN_ACCOUNT
        named = written.get("account") if isinstance(written, dict) else None
        return named if isinstance(named, str) and named.strip() else UNKNOWN_ACCOUNT

    def _file_families(self, with_samples: bool) -> list[Metric]:
        age_family = GaugeMetricFamily(
            "perps_bot_metrics_file_age_seconds",
            "Seconds since the served --metrics-file was updated.",
            labels=["account"],
        )
        stale_family = GaugeMetricFamily(
            "perps_bot_metrics_file_stale",
            "1 when the --metrics-file is missing or older than the threshold.",
            labels=["account"],
        )
        if with_samples:
            account = self.file_account()
            age = self.file_age_seconds()
            if age is not None:
                age_family.add_metric([account], age)
            stale_family.add_metric([account], 1.0 if age is None or age > self.stale_after_seconds else 0.0)
        return [age_family, stale_family]

    def render(self) -> bytes:
        """The file's exposition as last written (empty when missing) followed by the file's age and staleness."""
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            content = b""
        if content and not content.endswith(b"\n"):
            content += b"\n"
        return content + generate_latest(self._registry)

    def health(self) -> dict[str, Any]:
        """The bot's last /health JSON, with status "stale" when the file is too old, "unhealthy" when missing."""
        result: dict[str, Any] = {
            "status": "unhealthy",
            "uptime_seconds": None,
            "active_positions": None,
            "balance": None,
            "last_data_update": None,
        }
        age = self.file_age_seconds()
        if age is None:
            return {
                **result,
                "account": self.account or UNKNOWN_ACCOUNT,
                "metrics_file_age_seconds": None,
                "reason": f"metrics file {self.path} does not exist",
            }
        health_path = health_file_for(self.path)
        try:
            written = json.loads(health_path.read_text(encoding="utf-8"))
            if not isinstance(written, dict):
                raise ValueError("not a JSON object")
            result.update(written)
        except FileNotFoundError:
            result["reason"] = f"health file {health_path} does not exist"
        except ValueError as error:  # includes json.JSONDecodeError and UnicodeDecodeError
            result["status"] = "unhealthy"
            result["reason"] = f"health file {health_path} is not valid JSON ({error})"
        if self.account is not None:
            result["account"] = self.account
        elif not isinstance(result.get("account"), str) or not result["account"].strip():
            result["account"] = UNKNOWN_ACCOUNT
        result["metrics_file_age_seconds"] = round(age, 3)
        if age > self.stale_after_seconds:
            result["status"] = "stale"
            result["reason"] = (
                f"metrics file {self.path} not updated for {age:.0f} s (stale after {self.stale_after_seconds:.0f} s)"
            )
        return result


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], source: MetricsSource) -> None:
        self.source = source
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves socket.getfqdn(host), a DNS lookup that can stall start-up for
        # seconds; the name is only used in CGI variables, so skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server_version = "perps-bot-metrics"
    sys_version = ""

    def do_GET(self) -> None:
        source = cast(_HTTPServer, self.server).source
        path = urlsplit(self.path).path
        try:
            if path == "/metrics":
                self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, source.render())
            elif path == "/health":
                health = source.health()
                code = HTTPStatus.SERVICE_UNAVAILABLE if health.get("status") in UNHEALTHY_STATUSES else HTTPStatus.OK
                self._send(code, "application/json", json.dumps(health).encode() + b"\n")
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found; try /metrics or /health\n")
        except Exception:
            log.exception("metrics exporter failed to answer %s", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"exporter error; see the log\n")

    def _send(self, code: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def _bind_error(host: str, port: int, error: OSError) -> str:
    reason = error.strerror or str(error)
    if error.errno == errno.EADDRINUSE:
        return (
            f"METRICS_PORT={port} is already in use on {host} ({reason}); stop the other bot or exporter, "
            "choose another METRICS_PORT, or set METRICS_PORT=0 to pick a free port"
        )
    if error.errno == errno.EACCES:
        return f"METRICS_PORT={port} on {host} is not allowed ({reason}); use a port above 1023 such as 9102"
    return f"cannot serve metrics on METRICS_HOST={host} METRICS_PORT={port} ({reason}); use 127.0.0.1 and 9102"


class MetricsServer:
    """/metrics and /health on one port, in a daemon thread (ThreadingHTTPServer)."""

    def __init__(self, metrics: MetricsSource, host: str = "127.0.0.1", port: int = 9102) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"METRICS_PORT={port} is not a port; use 0 to 65535 (0 picks a free port)")
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        """Bind and serve in a daemon thread; ConfigError naming METRICS_PORT when the port is taken."""
        if self._httpd is not None:
            raise RuntimeError(f"metrics server already serving on {self.url}")
        try:
            httpd = _HTTPServer((self.host, self.requested_port), self.metrics)
        except OSError as error:  # socket.gaierror (bad host) is an OSError too
            raise ConfigError(_bind_error(self.host, self.requested_port, error)) from None
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name=f"metrics-{self.port}", daemon=True
        )
        self._thread.start()
        log.info("metrics on %s/metrics and %s/health", self.url, self.url)
        return self

    @property
    def port(self) -> int:
        """The port actually bound (the requested one before start)."""
        return int(self._httpd.server_address[1]) if self._httpd is not None else self.requested_port

    @property
    def url(self) -> str:
        """http://<host>:<actual port>, without a trailing slash."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        httpd, thread = self._httpd, self._thread
        self._httpd, self._thread = None, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self if self._httpd is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_metrics_file(
    path: Path,
    host: str = "127.0.0.1",
    port: int = 9102,
    *,
    account: str | None = None,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
) -> MetricsServer:
    """Start a standalone exporter serving the latest contents of a --metrics-file and its health JSON (its own
    gauges labelled with `account`, or the account the bot wrote into the health JSON)."""
    source = MetricsFileSource(path, account=account, stale_after_seconds=stale_after_seconds)
    server = MetricsServer(source, host, port).start()
    if not path.exists():
        log.warning("metrics file %s does not exist yet; /health answers unhealthy until the bot writes it", path)
    return server
