"""deployments/automations.py on a real (test-harness) Prefect server."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import SecretStr

from deployments.automations import AUTOMATION_NAME, CRASHED_EVENT, WEBHOOK_BLOCK_NAME, ensure_crash_automation
from trader.settings import Settings
from trader.testing.slack_recorder import SlackRecorder

pytestmark = pytest.mark.usefixtures("prefect_api")


def bot_settings(slack: SlackRecorder) -> Settings:
    return Settings(slack_bot_token=SecretStr(slack.token), slack_channel="#trading-alerts")


def test_the_crash_automation_is_created_once_and_holds_no_secret(slack: SlackRecorder) -> None:
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    first = ensure_crash_automation(bot_settings(slack), slack_api_url=slack.base_url)
    second = ensure_crash_automation(bot_settings(slack), slack_api_url=slack.base_url)

    assert first is not None and first == second
    with get_client(sync_client=True) as client:
        assert [a.id for a in client.read_automations_by_name(AUTOMATION_NAME)] == [first]
    automation = Automation.read(id=first)
    assert automation.trigger.expect == {CRASHED_EVENT}  # type: ignore[union-attr]
    (action,) = automation.actions
    assert action.type == "call-webhook"
    assert slack.token not in json.dumps(automation.model_dump(mode="json"))


def test_without_slack_settings_nothing_is_created() -> None:
    assert ensure_crash_automation(Settings()) is None


def test_a_crashed_flow_run_reaches_slack_through_the_automation(slack: SlackRecorder) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    ensure_crash_automation(bot_settings(slack), slack_api_url=slack.base_url)

    @flow(name="trading-bot")
    def stand_in(account: str = "default") -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(stand_in, parameters={"account": "alpha"})
        client.set_flow_run_state(run.id, Crashed(message="process exited with code -9"), force=True)

    deadline = time.monotonic() + 90  # the server's trigger and action services run on their own loop
    while not slack.posts() and time.monotonic() < deadline:
        time.sleep(0.5)
    (post,) = slack.posts()
    assert post.body["channel"] == "#trading-alerts"
    assert post.body["text"].startswith("[alpha] SEV-1 flow run crashed: trading-bot/")  # the run's account
    assert "process exited with code -9" in post.body["text"]
    assert "Halt trading if not already stopped" in post.body["text"]
    assert str(run.id) in post.body["text"]  # the UI link, or the id on a server without a UI URL


def test_the_slack_secret_lives_only_in_the_webhook_block(slack: SlackRecorder) -> None:
    from prefect.blocks.webhook import Webhook

    ensure_crash_automation(bot_settings(slack), slack_api_url=slack.base_url)

    block = Webhook.load(WEBHOOK_BLOCK_NAME)
    assert slack.token not in repr(block)
    assert block.headers.get_secret_value()["Authorization"] == f"Bearer {slack.token}"  # type: ignore[union-attr]
