"""Fixtures for alert tests: the Slack recorder, the environment the hooks read, and a Prefect test server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trader.testing.slack_recorder import SlackRecorder

SLACK_TOKEN = "xoxb-000000-test-secret-token"
SLACK_CHANNEL = "#trading-alerts"


@pytest.fixture
def slack() -> Iterator[SlackRecorder]:
    """A Slack Web API + incoming webhook on a free loopback port that accepts SLACK_TOKEN."""
    with SlackRecorder(token=SLACK_TOKEN) as recorder:
        yield recorder


@pytest.fixture
def alerts_env(monkeypatch: pytest.MonkeyPatch, slack: SlackRecorder, sqlite_url: str, tmp_path: Path) -> str:
    """Environment for hooks: the ledger in a temp SQLite file, Slack bot settings pointing at the recorder."""
    for name in ("SLACK_WEBHOOK_URL", "PERPS_PROFILE", "COINBASE_API_KEY", "COINBASE_API_SECRET", "COINBASE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    monkeypatch.setenv("SLACK_CHANNEL", SLACK_CHANNEL)
    monkeypatch.setenv("SLACK_API_URL", slack.base_url)
    return sqlite_url


@pytest.fixture(scope="package")
def prefect_api() -> Iterator[None]:
    """Prefect's own test harness: a temporary server (SQLite, with the automation services) for this package."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
