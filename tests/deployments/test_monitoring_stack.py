"""The monitoring stack end to end with the real binaries (Debian packages prometheus, prometheus-alertmanager) on
free loopback ports: Prometheus scrapes a running bot (a live `perps-bot` process on the local Advanced Trade
server), evaluates deployments/monitoring/alerts.rules.yml, and Alertmanager routes by
deployments/monitoring/alertmanager.yml to the Slack recorder's webhook. The exchange's failures drive the
error-rate guard over its threshold: the alert reaches Slack in the SEV-2 channel, and the resolved message follows
once the exchange answers again. Only the timings are shortened for the test (each rule's `for`, the evaluation and
scrape intervals, Alertmanager's group waits); the routing, grouping and inhibition are the repository's files."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deployments.test_cli_coinbase import env_for as coinbase_env
from tests.deployments.test_cli_metrics import PERPS_BOT, env_for, free_port
from tests.processes import http_ok, wait_for
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey, Fault
from trader.testing.slack_recorder import SlackRecorder

MONITORING = Path(__file__).resolve().parents[2] / "deployments" / "monitoring"


def binary(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: apt-get install -y prometheus prometheus-alertmanager (scripts/test does)"
    return found


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts processes for the test; each is stopped by its pid afterwards (SIGTERM, then SIGKILL)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, **options: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(list(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **options)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_amtool_routes_each_severity_to_its_channel_and_the_config_holds_no_secret() -> None:
    config = MONITORING / "alertmanager.yml"
    checked = subprocess.run([binary("amtool"), "check-config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    for severity, receiver in (("SEV-1", "slack-sev1"), ("SEV-2", "slack-sev2"), ("SEV-3", "slack-sev3")):
        routed = subprocess.run(
            [binary("amtool"), "config", "routes", "test", f"--config.file={config}", f"severity={severity}"],
            capture_output=True,
            text=True,
        )
        assert routed.stdout.strip() == receiver, routed.stdout + routed.stderr
    text = config.read_text()
    assert "hooks.slack.com" not in text and "xoxb-" not in text and "slack_api_url_file: /etc/perps-bot/" in text


@pytest.mark.slow
def test_a_guard_over_its_threshold_reaches_slack_and_the_resolved_message_follows(
    tmp_path: Path,
    exchange: AdvancedTradeServer,
    cdp_key: CdpKey,
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    bot_port, prom_port, am_port = free_port(), free_port(), free_port()
    with SlackRecorder() as slack:
        webhook = tmp_path / "slack-webhook-url"
        webhook.write_text(slack.webhook_url + "\n")
        webhook.chmod(0o600)

        am_config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
        am_config["global"]["slack_api_url_file"] = str(webhook)
        timing = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}
        am_config["route"].update(timing)
        for route in am_config["route"]["routes"]:
            route.update(timing)
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_config))

        rules = yaml.safe_load((MONITORING / "alerts.rules.yml").read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                rule["for"] = "1s"
        (tmp_path / "alerts.rules.yml").write_text(yaml.safe_dump(rules))
        prometheus_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "alerts.rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [
                {
                    "job_name": "perps-bot",
                    "honor_labels": True,  # the bot's own `account` label stays; `up` takes the target's
                    "static_configs": [{"targets": [f"127.0.0.1:{bot_port}"], "labels": {"account": "default"}}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))

        processes(
            binary("prometheus-alertmanager"),
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        )
        processes(
            binary("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        )
        env = env_for(
            tmp_path,
            **coinbase_env(exchange, cdp_key, tmp_path),
            BROKER="coinbase",
            METRICS_ENABLED="1",
            METRICS_HOST="127.0.0.1",
            METRICS_PORT=str(bot_port),
            COINBASE_MAX_RETRIES="0",
            COINBASE_TIMEOUT_SECONDS="2",
            RISK_GUARD_WINDOW_SECONDS="4",
            RISK_GUARD_MIN_SAMPLES="3",
            DATA_GATE_ENABLED="0",
        )
        bot = processes(str(PERPS_BOT), "--profile", "dev", "--interval", "0.5", cwd=tmp_path, env=env)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{am_port}/-/ready"), 30, "alertmanager ready")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{prom_port}/-/ready"), 30, "prometheus ready")
        wait_for(lambda: cycles(bot_port) >= 2 or bot.poll() is not None, 60, "the bot's first cycles")
        assert bot.poll() is None, bot.stderr and bot.stderr.read().decode()[-2000:]

        exchange.inject(Fault(kind="500", method="GET", path="/api/v3/brokerage", times=100_000))
        firing = wait_for(lambda: messages(slack, "FIRING", "PerpsBotErrorRateCritical"), 60, "the alert in Slack")
        [alert] = firing
        assert alert["channel"] == "#perps-bot-alerts"  # SEV-2's channel
        text = alert["attachments"][0]["text"]
        assert "default: 25% or more of exchange calls failing: trading halted" in text
        assert "First action: Check Coinbase status" in text and "Runbook: docs/monitoring.md#" in text

        exchange.clear_faults()
        wait_for(lambda: messages(slack, "RESOLVED", "PerpsBotErrorRateCritical"), 60, "the resolved message")
        assert bot.poll() is None  # the bot rode it out
        assert slack.webhook_path not in (tmp_path / "alertmanager.yml").read_text()


def cycles(port: int) -> float:
    """perps_bot_cycles_total from the bot's /metrics (0 until it answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return 0
    found = re.search(r"^perps_bot_cycles_total\{[^}]*\} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0


def messages(slack: SlackRecorder, status: str, alert: str) -> list[dict[str, Any]]:
    """Webhook posts whose title says this status and alert name."""
    found = []
    for request in slack.calls("webhook"):
        title = " ".join(a.get("title", "") for a in request.body.get("attachments") or [])
        if f"[{status}]" in title and alert in title:
            found.append(request.body)
    return found
