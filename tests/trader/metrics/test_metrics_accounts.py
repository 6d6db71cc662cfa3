"""Every perps_bot_* series names its bot's account, so one Prometheus tells many bots apart."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.trader.metrics.conftest import Clock, get, telemetry, value
from trader.metrics import BotMetrics, MetricsFileSource, MetricsServer, serve_metrics_file


def busy_bot(account: str, clock: Clock) -> BotMetrics:
    """A bot's metrics with every kind of series recorded: cycle, API calls, guard trip, recovery, checkpoint."""
    metrics = BotMetrics(account=account, clock=clock)
    metrics.record_cycle(telemetry(guard_levels={"daily_loss": "warning"}))
    metrics.observe_api_call("get_candles", 0.02, ok=True)
    metrics.observe_api_call("place_order", 0.3, ok=False)
    metrics.record_guard_trip("daily_loss", "warning")
    metrics.record_recovery("redis", 0.015)
    metrics.set_last_checkpoint(clock.now)
    return metrics


def accounts_by_series(text: bytes) -> dict[str, set[str | None]]:
    """Per perps_bot_ sample name, the account label values it carries (None for a sample without one)."""
    found: dict[str, set[str | None]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name.startswith("perps_bot_"):
                found.setdefault(sample.name, set()).add(sample.labels.get("account"))
    return found


def test_two_bots_export_every_series_with_their_own_account(clock: Clock) -> None:
    alpha, beta = busy_bot("alpha", clock), busy_bot("beta", clock)

    with MetricsServer(alpha, "127.0.0.1", 0) as first, MetricsServer(beta, "127.0.0.1", 0) as second:
        alpha_scrape, beta_scrape = get(first.url + "/metrics").body, get(second.url + "/metrics").body

    alpha_series, beta_series = accounts_by_series(alpha_scrape), accounts_by_series(beta_scrape)
    assert alpha_series.keys() == beta_series.keys()
    assert {
        "perps_bot_up",
        "perps_bot_position_count",
        "perps_bot_guard_level",
        "perps_bot_trading_state",
        "perps_bot_cycles_total",
        "perps_bot_cycle_duration_seconds_bucket",
        "perps_bot_api_latency_seconds_count",
        "perps_bot_api_errors_total",
        "perps_bot_guard_trips_total",
        "perps_bot_recovery_duration_seconds_sum",
        "perps_bot_data_gate_checks_total",
        "perps_bot_last_checkpoint_age_seconds",
        "perps_bot_rate_limit_waits_total",
        "perps_bot_rate_limit_wait_seconds_total",
    } <= alpha_series.keys()
    assert {name: {"alpha"} for name in alpha_series} == alpha_series
    assert {name: {"beta"} for name in beta_series} == beta_series
    assert 'perps_bot_cycles_total{account="alpha"} 1.0' in alpha_scrape.decode()
    assert value(beta_scrape, "perps_bot_guard_level", account="beta", guard="daily_loss") == 1


def test_rate_limit_counters_carry_the_exporting_bots_account(clock: Clock) -> None:
    scrape = BotMetrics(account="alpha", clock=clock).render()

    assert value(scrape, "perps_bot_rate_limit_waits_total", account="alpha", scope="private") is not None
    assert value(scrape, "perps_bot_rate_limit_wait_seconds_total", account="alpha", scope="public") is not None
    assert value(scrape, "perps_bot_rate_limit_waits_total", scope="private") is None


def test_counters_of_an_idle_bot_are_zero_under_its_account(clock: Clock) -> None:
    scrape = BotMetrics(account="beta", clock=clock).render()

    assert value(scrape, "perps_bot_cycles_total", account="beta") == 0
    assert value(scrape, "perps_bot_data_gate_failures_total", account="beta") == 0
    assert value(scrape, "perps_bot_cycle_duration_seconds_count", account="beta") == 0


def test_health_names_the_account(clock: Clock) -> None:
    assert BotMetrics(account="alpha", clock=clock).health()["account"] == "alpha"


def test_an_empty_account_is_refused() -> None:
    with pytest.raises(ValueError, match="account"):
        BotMetrics(account=" ")


def test_the_standalone_exporter_labels_its_file_gauges_with_the_account_the_bot_wrote(
    clock: Clock, tmp_path: Path
) -> None:
    path = tmp_path / "beta.prom"
    busy_bot("beta", clock).write_metrics_file(path)

    source = MetricsFileSource(path)
    scrape = source.render()

    assert value(scrape, "perps_bot_metrics_file_stale", account="beta") == 0
    assert value(scrape, "perps_bot_metrics_file_age_seconds", account="beta") is not None
    assert {name: {"beta"} for name in accounts_by_series(scrape)} == accounts_by_series(scrape)
    assert source.health()["account"] == "beta"


def test_an_account_given_to_the_standalone_exporter_labels_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "not_written_yet.prom"
    server = serve_metrics_file(path, "127.0.0.1", 0, account="alpha")
    try:
        scrape, health = get(server.url + "/metrics"), get(server.url + "/health")
    finally:
        server.stop()

    assert value(scrape.body, "perps_bot_metrics_file_stale", account="alpha") == 1
    assert (health.status, health.json()["account"]) == (503, "alpha")


def test_python_m_trader_metrics_takes_the_account(tmp_path: Path) -> None:
    path = tmp_path / "alpha.prom"
    exporter = subprocess.Popen(
        [sys.executable, "-m", "trader.metrics", "--metrics-file", str(path), "--port", "0", "--account", "alpha"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert exporter.stdout is not None
        line = exporter.stdout.readline()  # "serving PATH on http://127.0.0.1:PORT/metrics and ..."
        url = line.split(" on ", 1)[1].split("/metrics", 1)[0]
        deadline = time.monotonic() + 10
        while (scrape := get(url + "/metrics")).status != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)

    assert value(scrape.body, "perps_bot_metrics_file_stale", account="alpha") == 1
