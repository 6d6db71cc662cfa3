"""Fixtures for the metrics tests: a settable clock, a bot's metrics served on a free port, HTTP helpers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from trader.metrics import BotMetrics, CycleTelemetry, MetricsServer

T0 = 1_763_000_000.0


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(url: str) -> Response:
    """GET over real HTTP; an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return Response(answer.status, answer.headers.get("Content-Type", ""), answer.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.headers.get("Content-Type", ""), error.read())


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition as {(name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: bytes, name: str, **labels: str) -> float | None:
    """One sample's value, None when the sample is absent."""
    return samples(text).get((name, tuple(sorted(labels.items()))))


def telemetry(**changes: Any) -> CycleTelemetry:
    """A healthy cycle: 2 positions, all guards ok, trading."""
    base = CycleTelemetry(
        cycle=7,
        duration_ms=120.0,
        position_count=2,
        daily_pnl_pct=0.35,
        balance=10500.45,
        error_rate_pct=1.5,
        order_success_pct=98.0,
        market_data_age_seconds=4.0,
        last_data_update=datetime(2025, 11, 21, 15, 30, tzinfo=UTC),
        guard_levels={"daily_loss": "ok", "error_rate": "ok"},
        trading_state="trading",
        gate_checked=2,
        gate_failed=0,
    )
    return replace(base, **changes)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> BotMetrics:
    return BotMetrics(clock=clock)


@pytest.fixture
def server(metrics: BotMetrics) -> Iterator[MetricsServer]:
    """The bot's metrics served over HTTP on a free 127.0.0.1 port."""
    with MetricsServer(metrics, "127.0.0.1", 0) as running:
        yield running
