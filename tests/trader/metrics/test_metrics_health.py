"""/health over real HTTP: the runbook's JSON and the healthy -> degraded -> halted -> unhealthy transitions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.trader.metrics.conftest import Clock, get, telemetry
from trader.metrics import BotMetrics, MetricsServer

RUNBOOK_KEYS = {"status", "uptime_seconds", "active_positions", "balance", "last_data_update"}
EXTRA_KEYS = {
    "account",
    "trading_state",
    "guards",
    "cycle",
    "last_cycle_age_seconds",
    "last_checkpoint_age_seconds",
    "reason",
}


def test_health_has_the_runbook_keys_with_their_types(metrics: BotMetrics, server: MetricsServer, clock: Clock) -> None:
    clock.advance(3600)
    metrics.record_cycle(telemetry(position_count=2, balance=10500.45))
    metrics.set_last_checkpoint(clock.now - 20)

    answer = get(server.url + "/health")

    body = answer.json()
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert set(body) == RUNBOOK_KEYS | EXTRA_KEYS
    assert body["status"] == "healthy"
    assert body["uptime_seconds"] == 3600 and isinstance(body["uptime_seconds"], int)
    assert body["active_positions"] == 2 and isinstance(body["active_positions"], int)
    assert body["balance"] == 10500.45
    assert body["last_data_update"] == "2025-11-21T15:30:00Z"
    assert body["trading_state"] == "trading"
    assert body["guards"] == {"daily_loss": "ok", "error_rate": "ok"}
    assert body["cycle"] == 7
    assert body["last_cycle_age_seconds"] == 0
    assert body["last_checkpoint_age_seconds"] == 20
    assert body["reason"] is None


def test_last_data_update_is_given_in_utc_with_z(metrics: BotMetrics, server: MetricsServer) -> None:
    new_york = timezone(timedelta(hours=-5))
    metrics.record_cycle(telemetry(last_data_update=datetime(2025, 11, 21, 10, 30, 15, 500, tzinfo=new_york)))

    assert get(server.url + "/health").json()["last_data_update"] == "2025-11-21T15:30:15Z"


def test_before_the_first_cycle_health_is_starting_with_nulls(metrics: BotMetrics, server: MetricsServer) -> None:
    answer = get(server.url + "/health")

    body = answer.json()
    assert answer.status == 200
    assert set(body) == RUNBOOK_KEYS | EXTRA_KEYS
    assert body["status"] == "starting"
    assert body["active_positions"] is None and body["balance"] is None and body["last_data_update"] is None
    assert body["guards"] == {} and body["cycle"] == 0


def test_status_moves_healthy_degraded_halted_unhealthy(
    metrics: BotMetrics, server: MetricsServer, clock: Clock
) -> None:
    seen = []
    metrics.record_cycle(telemetry())
    seen.append(get(server.url + "/health"))
    clock.advance(60)
    metrics.record_cycle(telemetry(guard_levels={"daily_loss": "warning", "error_rate": "ok"}))
    seen.append(get(server.url + "/health"))
    clock.advance(60)
    metrics.record_cycle(telemetry(guard_levels={"daily_loss": "critical"}, trading_state="halted"))
    seen.append(get(server.url + "/health"))
    clock.advance(181)
    seen.append(get(server.url + "/health"))

    assert [(answer.json()["status"], answer.status) for answer in seen] == [
        ("healthy", 200),
        ("degraded", 200),
        ("halted", 200),
        ("unhealthy", 503),
    ]
    assert seen[1].json()["reason"] == "daily_loss=warning"
    assert seen[3].json()["reason"] == "no cycle finished for 181 s (stale after 180 s)"


def test_reduce_only_with_all_guards_ok_is_degraded(metrics: BotMetrics, server: MetricsServer) -> None:
    metrics.record_cycle(telemetry(trading_state="reduce_only"))

    answer = get(server.url + "/health")

    assert (answer.status, answer.json()["status"], answer.json()["reason"]) == (200, "degraded", "reduce-only")


def test_a_cycle_within_the_window_keeps_it_healthy(metrics: BotMetrics, server: MetricsServer, clock: Clock) -> None:
    metrics.record_cycle(telemetry())
    clock.advance(180)

    assert get(server.url + "/health").json()["status"] == "healthy"


def test_no_cycle_since_start_for_longer_than_the_window_is_unhealthy(
    metrics: BotMetrics, server: MetricsServer, clock: Clock
) -> None:
    clock.advance(181)

    answer = get(server.url + "/health")

    assert (answer.status, answer.json()["status"]) == (503, "unhealthy")


def test_staleness_window_is_a_constructor_argument(clock: Clock) -> None:
    metrics = BotMetrics(clock=clock, stale_after_seconds=10)
    metrics.record_cycle(telemetry())
    clock.advance(11)

    with MetricsServer(metrics, "127.0.0.1", 0) as server:
        answer = get(server.url + "/health")

    assert (answer.status, answer.json()["status"]) == (503, "unhealthy")


def test_mark_stopped_makes_health_unhealthy_at_once(metrics: BotMetrics, server: MetricsServer) -> None:
    metrics.record_cycle(telemetry())
    metrics.mark_stopped()

    answer = get(server.url + "/health")

    assert (answer.status, answer.json()["status"], answer.json()["reason"]) == (
        503,
        "unhealthy",
        "the bot has stopped",
    )


def test_recovered_bot_is_healthy_again_after_a_fresh_cycle(
    metrics: BotMetrics, server: MetricsServer, clock: Clock
) -> None:
    metrics.record_cycle(telemetry())
    clock.advance(500)
    stale = get(server.url + "/health")
    metrics.record_cycle(telemetry(cycle=8))

    fresh = get(server.url + "/health")

    assert (stale.status, fresh.status, fresh.json()["status"], fresh.json()["cycle"]) == (503, 200, "healthy", 8)
