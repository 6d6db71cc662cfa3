"""perps-bot with the exporter: the runbook's --metrics-file, the standalone exporter, /health while it runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PERPS_BOT = Path(sys.executable).parent / "perps-bot"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    prefixes = ("COINBASE_", "RISK_", "PERPS_", "BROKER", "MARKET_DATA", "METRICS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update({"STATE_DIR": str(home / "var/state"), "LOG_DIR": str(home / "var/logs"), **extra})
    return env


def test_metrics_file_is_rewritten_every_cycle_and_served_by_the_standalone_exporter(tmp_path: Path) -> None:
    metrics_file = tmp_path / "metrics" / "perps_bot.prom"
    env = env_for(tmp_path, METRICS_ENABLED="0")

    ran = subprocess.run(
        [str(PERPS_BOT), "--profile", "dev", "--cycles", "3", "--interval", "0", "--metrics-file", str(metrics_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert ran.returncode == 0, ran.stderr
    assert 'perps_bot_cycles_total{account="default"} 3.0' in metrics_file.read_text()
    assert json.loads(Path(f"{metrics_file}.health.json").read_text())["active_positions"] is not None

    port = free_port()
    exporter = subprocess.Popen(
        [str(PERPS_BOT), "metrics", "--metrics-file", str(metrics_file)],
        cwd=tmp_path,
        env={**env, "METRICS_PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    scrape = response.read().decode()
                break
            except OSError:
                assert exporter.poll() is None and time.monotonic() < deadline, (
                    exporter.stderr and exporter.stderr.read()
                )
                time.sleep(0.2)
        assert 'perps_bot_cycles_total{account="default"} 3.0' in scrape
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)


def test_a_running_bot_answers_health_on_its_metrics_port(tmp_path: Path) -> None:
    port = free_port()
    bot = subprocess.Popen(
        [str(PERPS_BOT), "--profile", "dev", "--interval", "0.2"],
        cwd=tmp_path,
        env=env_for(tmp_path, METRICS_ENABLED="1", METRICS_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        health: dict = {}
        while health.get("status") != "healthy":
            assert bot.poll() is None and time.monotonic() < deadline, health
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    health = json.loads(response.read())
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.2)
        assert health["uptime_seconds"] >= 0 and health["balance"] > 0 and health["last_data_update"]
    finally:
        bot.terminate()
        assert bot.wait(timeout=30) == 0


def test_metrics_without_a_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    ran = subprocess.run(
        [str(PERPS_BOT), "metrics"], cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=60
    )

    assert ran.returncode == 2 and "--metrics-file PATH is required" in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1
