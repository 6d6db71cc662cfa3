"""The --metrics-file mode: written atomically by the bot, served by the standalone exporter, stale detection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.trader.metrics.conftest import Clock, get, telemetry, value
from trader.metrics import BotMetrics, MetricsFileSource, MetricsServer, health_file_for, serve_metrics_file


def test_write_metrics_file_writes_exposition_and_health_json(metrics: BotMetrics, tmp_path: Path) -> None:
    path = tmp_path / "run" / "perps_bot.prom"
    metrics.record_cycle(telemetry(position_count=4))

    metrics.write_metrics_file(path)

    assert value(path.read_bytes(), "perps_bot_position_count", account="default") == 4
    assert json.loads(health_file_for(path).read_text())["active_positions"] == 4
    assert health_file_for(path) == tmp_path / "run" / "perps_bot.prom.health.json"
    assert sorted(p.name for p in path.parent.iterdir()) == ["perps_bot.prom", "perps_bot.prom.health.json"]
    assert (path.stat().st_mode & 0o777, health_file_for(path).stat().st_mode & 0o777) == (0o644, 0o644)


def test_readers_never_see_a_partly_written_metrics_file(metrics: BotMetrics, tmp_path: Path) -> None:
    path = tmp_path / "perps_bot.prom"
    for guard in range(300):  # a large file, so a non-atomic write would be seen half-done
        metrics.record_guard_trip(f"guard_{guard}", "warning")
    metrics.write_metrics_file(path)
    complete = path.read_bytes()
    stop = threading.Event()
    torn: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            content = path.read_bytes()
            if len(content) != len(complete):
                torn.append(len(content))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(100):
            metrics.write_metrics_file(path)
    finally:
        stop.set()
        thread.join()

    assert torn == []


def test_serve_metrics_file_serves_the_latest_file_contents(metrics: BotMetrics, tmp_path: Path) -> None:
    path = tmp_path / "perps_bot.prom"
    metrics.record_cycle(telemetry(position_count=1))
    metrics.write_metrics_file(path)
    server = serve_metrics_file(path, "127.0.0.1", 0)
    try:
        first = get(server.url + "/metrics")
        metrics.record_cycle(telemetry(position_count=6, balance=10100.0))
        metrics.write_metrics_file(path)
        second = get(server.url + "/metrics")
        health = get(server.url + "/health")
    finally:
        server.stop()

    assert (first.status, second.status, health.status) == (200, 200, 200)
    assert value(first.body, "perps_bot_position_count", account="default") == 1
    assert value(second.body, "perps_bot_position_count", account="default") == 6
    assert value(second.body, "perps_bot_metrics_file_stale", account="default") == 0
    age = value(second.body, "perps_bot_metrics_file_age_seconds", account="default")
    assert age is not None and 0 <= age < 60
    body = health.json()
    assert (body["status"], body["active_positions"], body["balance"]) == ("healthy", 6, 10100.0)
    assert body["last_data_update"] == "2025-11-21T15:30:00Z"


def test_file_not_updated_for_longer_than_the_threshold_is_stale(metrics: BotMetrics, tmp_path: Path) -> None:
    path = tmp_path / "perps_bot.prom"
    metrics.record_cycle(telemetry())
    metrics.write_metrics_file(path)
    ten_minutes_ago = time.time() - 600
    os.utime(path, (ten_minutes_ago, ten_minutes_ago))
    server = serve_metrics_file(path, "127.0.0.1", 0, stale_after_seconds=180)
    try:
        health = get(server.url + "/health")
        scrape = get(server.url + "/metrics")
    finally:
        server.stop()

    assert (health.status, health.json()["status"]) == (503, "stale")
    assert health.json()["reason"].startswith(f"metrics file {path} not updated for 600 s")
    assert health.json()["metrics_file_age_seconds"] >= 600
    assert value(scrape.body, "perps_bot_metrics_file_stale", account="default") == 1
    assert value(scrape.body, "perps_bot_position_count", account="default") == 2  # the last values stay visible


def test_bot_that_stopped_writes_an_unhealthy_health_file(metrics: BotMetrics, tmp_path: Path) -> None:
    path = tmp_path / "perps_bot.prom"
    metrics.record_cycle(telemetry())
    metrics.mark_stopped()
    metrics.write_metrics_file(path)

    with MetricsServer(MetricsFileSource(path), "127.0.0.1", 0) as server:
        health = get(server.url + "/health")

    assert (health.status, health.json()["status"]) == (503, "unhealthy")


def test_missing_metrics_file_is_unhealthy_and_scrapes_only_the_file_gauges(tmp_path: Path) -> None:
    path = tmp_path / "not_written_yet.prom"
    server = serve_metrics_file(path, "127.0.0.1", 0)
    try:
        health = get(server.url + "/health")
        scrape = get(server.url + "/metrics")
    finally:
        server.stop()

    assert (health.status, health.json()["status"]) == (503, "unhealthy")
    assert {"status", "uptime_seconds", "active_positions", "balance", "last_data_update"} <= set(health.json())
    assert value(scrape.body, "perps_bot_metrics_file_stale", account="unknown") == 1  # no health JSON names it
    assert value(scrape.body, "perps_bot_metrics_file_age_seconds", account="unknown") is None
    assert "perps_bot_up" not in scrape.body.decode()


def test_file_source_staleness_follows_its_clock(metrics: BotMetrics, tmp_path: Path) -> None:
    path = tmp_path / "perps_bot.prom"
    metrics.record_cycle(telemetry())
    metrics.write_metrics_file(path)
    clock = Clock(now=path.stat().st_mtime)
    source = MetricsFileSource(path, clock=clock, stale_after_seconds=30)

    fresh = source.health()["status"]
    clock.advance(31)

    assert (fresh, source.health()["status"]) == ("healthy", "stale")


def test_python_m_trader_metrics_serves_the_file_until_interrupted(metrics: BotMetrics, tmp_path: Path) -> None:
    path = tmp_path / "perps_bot.prom"
    metrics.record_cycle(telemetry(position_count=9))
    metrics.write_metrics_file(path)
    process = subprocess.Popen(
        [sys.executable, "-m", "trader.metrics", "--metrics-file", str(path), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = banner.split(" on ", 1)[1].split("/metrics", 1)[0]
        scrape = get(url + "/metrics")
        health = get(url + "/health")
        process.send_signal(signal.SIGINT)
        exit_code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert banner.startswith(f"serving {path} on http://127.0.0.1:")
    assert value(scrape.body, "perps_bot_position_count", account="default") == 9
    assert health.json()["active_positions"] == 9
    assert exit_code == 0


def test_python_m_trader_metrics_on_a_taken_port_exits_2_naming_metrics_port(tmp_path: Path) -> None:
    with MetricsServer(BotMetrics(), "127.0.0.1", 0) as taken:
        port = taken.port
        result = subprocess.run(
            [sys.executable, "-m", "trader.metrics", "--metrics-file", str(tmp_path / "m.prom"), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert result.returncode == 2
    assert result.stderr.startswith(f"error: METRICS_PORT={port} is already in use")
    assert len(result.stderr.strip().splitlines()) == 1
