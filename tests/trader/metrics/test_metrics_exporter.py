"""The bot's /metrics scraped over real HTTP: values after a cycle, API latency, guard trips, checkpoint age."""

from __future__ import annotations

import math
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.trader.metrics.conftest import Clock, get, samples, telemetry, value
from trader.errors import ConfigError
from trader.metrics import BotMetrics, MetricsServer


def test_cycle_values_appear_on_metrics_after_record_cycle(metrics: BotMetrics, server: MetricsServer) -> None:
    before = get(server.url + "/metrics")
    metrics.record_cycle(telemetry(position_count=3, daily_pnl_pct=-0.8, balance=9876.5))

    after = get(server.url + "/metrics")

    assert before.status == after.status == 200
    assert after.content_type.startswith("text/plain")
    assert value(before.body, "perps_bot_position_count", account="default") is None
    assert value(after.body, "perps_bot_position_count", account="default") == 3
    assert value(after.body, "perps_bot_daily_pnl_pct", account="default") == -0.8
    assert value(after.body, "perps_bot_balance", account="default") == 9876.5
    assert value(after.body, "perps_bot_error_rate_pct", account="default") == 1.5
    assert value(after.body, "perps_bot_order_success_pct", account="default") == 98.0
    assert value(after.body, "perps_bot_market_data_age_seconds", account="default") == 4.0
    assert value(after.body, "perps_bot_cycles_total", account="default") == 1
    assert value(after.body, "perps_bot_cycle_duration_seconds_count", account="default") == 1
    assert value(after.body, "perps_bot_cycle_duration_seconds_sum", account="default") == pytest.approx(0.12)
    assert value(after.body, "perps_bot_up", account="default") == 1


def test_trading_state_and_guard_levels_are_gauges_per_label(metrics: BotMetrics, server: MetricsServer) -> None:
    metrics.record_cycle(
        telemetry(
            guard_levels={"daily_loss": "warning", "error_rate": "critical", "latency": "ok"},
            trading_state="reduce_only",
        )
    )

    body = get(server.url + "/metrics").body

    assert value(body, "perps_bot_guard_level", account="default", guard="daily_loss") == 1
    assert value(body, "perps_bot_guard_level", account="default", guard="error_rate") == 2
    assert value(body, "perps_bot_guard_level", account="default", guard="latency") == 0
    assert value(body, "perps_bot_trading_state", account="default", state="reduce_only") == 1
    assert value(body, "perps_bot_trading_state", account="default", state="trading") == 0
    assert value(body, "perps_bot_trading_state", account="default", state="halted") == 0


def test_unknown_values_are_absent_not_nan(metrics: BotMetrics, server: MetricsServer) -> None:
    metrics.record_cycle(telemetry(error_rate_pct=None, order_success_pct=None, market_data_age_seconds=None))

    found = samples(get(server.url + "/metrics").body)

    names = {name for name, _ in found}
    assert "perps_bot_error_rate_pct" not in names
    assert "perps_bot_order_success_pct" not in names
    assert "perps_bot_market_data_age_seconds" not in names
    assert "perps_bot_last_checkpoint_age_seconds" not in names  # no checkpoint recorded
    assert not any(math.isnan(v) for v in found.values())


def test_market_data_age_keeps_growing_until_the_next_cycle(
    metrics: BotMetrics, server: MetricsServer, clock: Clock
) -> None:
    metrics.record_cycle(telemetry(market_data_age_seconds=4.0))
    clock.advance(30)

    body = get(server.url + "/metrics").body

    assert value(body, "perps_bot_market_data_age_seconds", account="default") == 34.0
    assert value(body, "perps_bot_last_cycle_age_seconds", account="default") == 30.0


def test_api_latency_histogram_counts_calls_per_method(metrics: BotMetrics, server: MetricsServer) -> None:
    metrics.observe_api_call("get_candles", 0.004, ok=True)
    metrics.observe_api_call("get_candles", 0.3, ok=True)
    metrics.observe_api_call("place_order", 1.2, ok=False)

    body = get(server.url + "/metrics").body

    assert value(body, "perps_bot_api_latency_seconds_count", account="default", method="get_candles") == 2
    assert value(body, "perps_bot_api_latency_seconds_bucket", account="default", method="get_candles", le="0.005") == 1
    assert value(body, "perps_bot_api_latency_seconds_bucket", account="default", method="get_candles", le="0.5") == 2
    assert value(body, "perps_bot_api_latency_seconds_bucket", account="default", method="place_order", le="1.0") == 0
    assert value(body, "perps_bot_api_latency_seconds_bucket", account="default", method="place_order", le="5.0") == 1
    assert value(body, "perps_bot_api_latency_seconds_sum", account="default", method="place_order") == pytest.approx(
        1.2
    )
    assert value(body, "perps_bot_api_calls_total", account="default", method="get_candles") == 2
    assert value(body, "perps_bot_api_errors_total", account="default", method="place_order") == 1
    assert value(body, "perps_bot_api_errors_total", account="default", method="get_candles") is None


def test_guard_trips_are_counted_with_guard_and_level_labels(metrics: BotMetrics, server: MetricsServer) -> None:
    metrics.record_guard_trip("daily_loss", "warning")
    metrics.record_guard_trip("daily_loss", "warning")
    metrics.record_guard_trip("daily_loss", "critical")
    metrics.record_guard_trip("error_rate", "warning")

    body = get(server.url + "/metrics").body

    assert value(body, "perps_bot_guard_trips_total", account="default", guard="daily_loss", level="warning") == 2
    assert value(body, "perps_bot_guard_trips_total", account="default", guard="daily_loss", level="critical") == 1
    assert value(body, "perps_bot_guard_trips_total", account="default", guard="error_rate", level="warning") == 1


def test_guard_trip_at_level_ok_is_refused(metrics: BotMetrics) -> None:
    with pytest.raises(ValueError, match="warning, critical"):
        metrics.record_guard_trip("daily_loss", "ok")


def test_last_checkpoint_age_grows_with_the_clock(metrics: BotMetrics, server: MetricsServer, clock: Clock) -> None:
    metrics.set_last_checkpoint(clock.now)
    first = value(get(server.url + "/metrics").body, "perps_bot_last_checkpoint_age_seconds", account="default")
    clock.advance(95)

    second = value(get(server.url + "/metrics").body, "perps_bot_last_checkpoint_age_seconds", account="default")

    assert first == 0
    assert second == 95


def test_uptime_grows_with_the_clock(metrics: BotMetrics, server: MetricsServer, clock: Clock) -> None:
    clock.advance(3600)

    assert value(get(server.url + "/metrics").body, "perps_bot_uptime_seconds", account="default") == 3600


def test_recovery_durations_are_observed_per_kind(metrics: BotMetrics, server: MetricsServer) -> None:
    metrics.record_recovery("redis", 2.0)
    metrics.record_recovery("engine", 45.0)

    body = get(server.url + "/metrics").body

    assert value(body, "perps_bot_recovery_duration_seconds_count", account="default", kind="redis") == 1
    assert value(body, "perps_bot_recovery_duration_seconds_sum", account="default", kind="engine") == 45.0
    assert value(body, "perps_bot_recovery_duration_seconds_bucket", account="default", kind="engine", le="30.0") == 0
    assert value(body, "perps_bot_recovery_duration_seconds_bucket", account="default", kind="engine", le="60.0") == 1


def test_data_gate_counters_add_each_cycles_checks(metrics: BotMetrics, server: MetricsServer) -> None:
    metrics.record_cycle(telemetry(gate_checked=2, gate_failed=1))
    metrics.record_cycle(telemetry(gate_checked=3, gate_failed=0))

    body = get(server.url + "/metrics").body

    assert value(body, "perps_bot_data_gate_checks_total", account="default") == 5
    assert value(body, "perps_bot_data_gate_failures_total", account="default") == 1


def test_mark_stopped_drops_up_to_zero(metrics: BotMetrics, server: MetricsServer) -> None:
    metrics.mark_stopped()

    assert value(get(server.url + "/metrics").body, "perps_bot_up", account="default") == 0


def test_unknown_path_is_404(server: MetricsServer) -> None:
    assert get(server.url + "/").status == 404
    assert get(server.url + "/metrics/extra").status == 404
    assert get(server.url + "/metrics?name=x").status == 200


def test_port_in_use_is_a_config_error_naming_metrics_port(metrics: BotMetrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(ConfigError, match=f"METRICS_PORT={port} is already in use") as raised:
            MetricsServer(metrics, "127.0.0.1", port).start()

    assert "\n" not in str(raised.value)


def test_stop_releases_the_port(metrics: BotMetrics) -> None:
    first = MetricsServer(metrics, "127.0.0.1", 0).start()
    port = first.port
    first.stop()

    second = MetricsServer(metrics, "127.0.0.1", port).start()
    try:
        assert get(second.url + "/metrics").status == 200
    finally:
        second.stop()


def test_two_bots_in_one_process_keep_their_own_registries(clock: Clock) -> None:
    one, two = BotMetrics(clock=clock), BotMetrics(clock=clock)
    with MetricsServer(one, "127.0.0.1", 0) as first, MetricsServer(two, "127.0.0.1", 0) as second:
        one.record_cycle(telemetry(position_count=5))
        one.observe_api_call("get_candles", 0.1, ok=True)
        two.record_cycle(telemetry(position_count=1))

        first_body, second_body = get(first.url + "/metrics").body, get(second.url + "/metrics").body

    assert value(first_body, "perps_bot_position_count", account="default") == 5
    assert value(second_body, "perps_bot_position_count", account="default") == 1
    assert value(second_body, "perps_bot_api_calls_total", account="default", method="get_candles") is None
    assert REGISTRY.get_sample_value("perps_bot_position_count") is None
    assert REGISTRY.get_sample_value("perps_bot_cycles_total") is None


def test_scrapes_while_the_bot_records_from_another_thread(metrics: BotMetrics, server: MetricsServer) -> None:
    stop = threading.Event()

    def bot() -> None:
        cycle = 0
        while not stop.is_set():
            cycle += 1
            metrics.record_cycle(telemetry(cycle=cycle, position_count=cycle % 5))
            metrics.observe_api_call("get_candles", 0.01, ok=True)
            time.sleep(0.0005)  # let the server thread have the GIL now and then

    thread = threading.Thread(target=bot)
    thread.start()
    try:
        answers = [get(server.url + "/metrics") for _ in range(20)] + [get(server.url + "/health") for _ in range(20)]
    finally:
        stop.set()
        thread.join()

    assert {answer.status for answer in answers} == {200}
    assert all(value(answer.body, "perps_bot_up", account="default") == 1 for answer in answers[:20])


def test_guard_readings_and_order_and_fill_counters_feed_the_alert_rules(
    metrics: BotMetrics, server: MetricsServer
) -> None:
    metrics.record_cycle(telemetry(guard_readings={"exposure": 76.5, "drawdown": 3.0}, orders=2, fills=1))
    metrics.record_cycle(telemetry(guard_readings={"exposure": 91.0}, orders=0, fills=3))

    body = get(server.url + "/metrics").body

    assert value(body, "perps_bot_guard_reading", account="default", guard="exposure") == 91.0
    assert value(body, "perps_bot_guard_reading", account="default", guard="drawdown") is None  # not read this cycle
    assert value(body, "perps_bot_orders_total", account="default") == 2
    assert value(body, "perps_bot_fills_total", account="default") == 4


def test_disk_free_ratio_is_the_state_folders_filesystem_and_absent_when_it_is_gone(
    clock: Clock, tmp_path: Path
) -> None:
    metrics = BotMetrics(clock=clock, disk_path=tmp_path)
    usage = shutil.disk_usage(tmp_path)
    ratio = value(metrics.render(), "perps_bot_disk_free_ratio", account="default")
    assert ratio is not None and abs(ratio - usage.free / usage.total) < 0.01

    gone = BotMetrics(clock=clock, disk_path=tmp_path / "missing")
    assert value(gone.render(), "perps_bot_disk_free_ratio", account="default") is None


def test_open_incidents_are_counted_by_severity_and_failing_flows_named_read_at_most_every_10_s(
    clock: Clock,
) -> None:
    reads: list[float] = []
    open_now = [("flow:backup", "SEV-2"), ("guard:exposure:critical", "SEV-2"), ("flow:daily-checklist", "SEV-3")]

    def incidents() -> list[tuple[str, str]]:
        reads.append(clock.now)
        return list(open_now)

    metrics = BotMetrics(clock=clock, open_incidents=incidents)
    body = metrics.render()
    assert value(body, "perps_bot_open_incidents", account="default", severity="SEV-2") == 2
    assert value(body, "perps_bot_open_incidents", account="default", severity="SEV-1") == 0
    assert value(body, "perps_bot_flow_failing", account="default", flow="backup") == 1
    assert value(body, "perps_bot_flow_failing", account="default", flow="daily-checklist") == 1

    open_now.clear()  # resolved: seen at the first scrape 10 s after the last read
    assert value(metrics.render(), "perps_bot_flow_failing", account="default", flow="backup") == 1
    clock.advance(10)
    body = metrics.render()
    assert value(body, "perps_bot_flow_failing", account="default", flow="backup") is None
    assert value(body, "perps_bot_open_incidents", account="default", severity="SEV-2") == 0
    assert len(reads) == 2
