"""The running bot's exporter scraped over HTTP: what a cycle records reaches /metrics, /health and the metrics file."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from trader.brokers.simulated import SimulatedExchange
from trader.errors import ConfigError
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.metrics.exporter import MetricsServer
from trader.runtime import build_bot, start_metrics
from trader.settings import load_settings


def scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(text: str, name: str) -> float:
    """The value of the first sample line that starts with `name` (name may include labels)."""
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the scrape")


def test_a_running_bot_is_scraped_over_http_and_reports_unhealthy_once_stopped(tmp_path: Path) -> None:
    settings = load_settings(
        profile="dev",
        state_dir=tmp_path / "state",
        log_dir=tmp_path / "logs",
        broker="simulated",
        strategy_fast_window=2,
        strategy_slow_window=4,
        metrics_enabled=True,
        metrics_port=0,
        metrics_file=tmp_path / "metrics.prom",
        data_gate_enabled=True,
    )
    exchange = SimulatedExchange(ReplayMarketData())
    bot = build_bot(settings, broker=exchange, ledger=Ledger(settings.database_url))
    server = start_metrics(settings, bot)
    assert isinstance(server, MetricsServer)
    bot.start()
    summary = bot.run(40, interval_seconds=0)

    status, text = scrape(f"{server.url}/metrics")
    assert status == 200
    positions = sum(1 for p in exchange.positions() if p.quantity)
    assert sample(text, 'perps_bot_position_count{account="default"}') == positions
    assert sample(text, 'perps_bot_api_latency_seconds_count{account="default",method="candles"}') >= 40
    # startup reconciliation's reads go through the metered broker too
    assert sample(text, 'perps_bot_api_latency_seconds_count{account="default",method="list_open_orders"}') >= 1
    assert sample(text, 'perps_bot_cycles_total{account="default"}') == summary.cycles == 40
    assert sample(text, 'perps_bot_data_gate_checks_total{account="default"}') == 40
    assert sample(text, 'perps_bot_guard_level{account="default",guard="error_rate"}') == 0
    assert sample(text, 'perps_bot_last_checkpoint_age_seconds{account="default"}') >= 0

    status, body = scrape(f"{server.url}/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "healthy", health
    assert health["active_positions"] == positions and health["balance"] > 0 and health["uptime_seconds"] >= 0
    newest = bot.broker.candles("BTC-USD", 1)[-1].start
    assert health["last_data_update"] == newest.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert 'perps_bot_cycles_total{account="default"} 40.0' in (tmp_path / "metrics.prom").read_text()

    bot.stop()
    status, body = scrape(f"{server.url}/health")
    assert status == 503 and json.loads(body)["status"] == "unhealthy"
    server.stop()


def test_a_taken_metrics_port_is_logged_and_the_bot_trades_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(
            profile="dev", state_dir=tmp_path, broker="simulated", metrics_enabled=True, metrics_port=port
        )
        bot = build_bot(settings, mode="dry_run")

        assert start_metrics(settings, bot) is None
        assert bot.metrics is not None  # still recorded, for the metrics file
        assert f"METRICS_PORT={port}" in caplog.text
        with pytest.raises(ConfigError):
            MetricsServer(bot.metrics, "127.0.0.1", port).start()
