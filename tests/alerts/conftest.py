"""Fixtures for alert tests: the Slack recorder, the environment the hooks read, and the session's Prefect server."""

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


@pytest.fixture
def prefect_api(prefect_server: dict[str, str]) -> Iterator[None]:
    """The session's Prefect server (tests/conftest.py; SQLite, with the automation services), without the crash
    automation and its Webhook block when the test starts and after it ends: each test creates its own, pointing at
    its own Slack recorder, and no later test's crashed run calls a recorder that is gone."""
    remove_crash_automation()
    yield
    remove_crash_automation()


def remove_crash_automation() -> None:
    """Delete the automation named AUTOMATION_NAME and the Webhook block named WEBHOOK_BLOCK_NAME, if present."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from deployments.automations import AUTOMATION_NAME, WEBHOOK_BLOCK_NAME

    with get_client(sync_client=True) as client:
        for automation in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(automation.id)
        try:
            block = client.read_block_document_by_name(WEBHOOK_BLOCK_NAME, block_type_slug="webhook")
        except ObjectNotFound:
            return
        client.delete_block_document(block.id)
