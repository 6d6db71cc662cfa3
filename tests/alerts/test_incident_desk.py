"""IncidentDesk with the real slack-sdk against the local Slack recorder."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import SecretStr

from trader.alerts import (
    IncidentDesk,
    IncidentKind,
    LogNotifier,
    SlackNotifier,
    WebhookNotifier,
    notifier_from_settings,
)
from trader.ledger.ledger import Ledger
from trader.settings import Settings
from trader.testing.slack_recorder import SlackRecorder

SLACK_TOKEN = "xoxb-000000-test-secret-token"  # the recorder fixture's token (conftest.py)
SLACK_CHANNEL = "#trading-alerts"
URL = "http://127.0.0.1:4200/runs/flow-run/00000000-0000-0000-0000-000000000001"


@pytest.fixture
def ledger(sqlite_url: str) -> Ledger:
    return Ledger(sqlite_url)


@pytest.fixture
def desk(ledger: Ledger, slack: SlackRecorder) -> IncidentDesk:
    return IncidentDesk(ledger, SlackNotifier(SLACK_TOKEN, SLACK_CHANNEL, base_url=slack.base_url))


def raise_stall(desk: IncidentDesk, evidence: str = "no balance snapshot for 12 minutes") -> int | None:
    return desk.raise_incident(
        IncidentKind.TELEMETRY_STALLED, "account telemetry stalled", evidence, fingerprint="telemetry", flow_run_url=URL
    )


def test_same_fingerprint_twice_is_one_post_and_one_threaded_reply(desk: IncidentDesk, slack: SlackRecorder) -> None:
    first = raise_stall(desk)
    second = raise_stall(desk, "no balance snapshot for 20 minutes")

    assert first == second
    root, reply = slack.posts()
    assert "thread_ts" not in root.body
    assert root.body["blocks"][0]["text"]["text"] == "[default] SEV-2: account telemetry stalled"
    assert reply.body["thread_ts"] == desk.ledger.open_incidents()[0].slack_ts
    assert reply.body["text"].startswith("[default] update: account telemetry stalled")
    assert "20 minutes" in reply.body["text"]


def test_resolve_posts_in_the_thread_and_closes_the_ledger_incident(desk: IncidentDesk, slack: SlackRecorder) -> None:
    raise_stall(desk)
    ts = desk.ledger.open_incidents()[0].slack_ts

    assert desk.resolve("telemetry") is True

    resolve = slack.posts()[-1]
    assert resolve.body["thread_ts"] == ts
    assert resolve.body["text"].startswith("[default] resolved: account telemetry stalled (passes again")
    assert slack.calls("chat.update")[0].body["ts"] == ts
    assert desk.ledger.open_incidents() == []
    assert desk.resolve("telemetry") is False


def test_rate_limit_is_waited_out_and_the_message_delivered(desk: IncidentDesk, slack: SlackRecorder) -> None:
    slack.fail_next(429, retry_after=1)

    raise_stall(desk)

    assert [r.status for r in slack.requests] == [429, 200]
    assert desk.ledger.open_incidents()[0].notified is True


def test_a_rate_limit_longer_than_the_bound_is_not_waited_out(desk: IncidentDesk, slack: SlackRecorder) -> None:
    slack.fail_next(429, retry_after=3600)

    raise_stall(desk)

    assert [r.status for r in slack.requests] == [429]
    assert desk.ledger.open_incidents()[0].notified is False


def test_slack_down_keeps_the_incident_pending_until_deliver_pending(desk: IncidentDesk, slack: SlackRecorder) -> None:
    slack.go_down()

    incident_id = raise_stall(desk)

    pending = desk.ledger.open_incidents()[0]
    assert (pending.id, pending.notified, pending.slack_ts) == (incident_id, False, None)
    slack.come_back()
    assert desk.deliver_pending() == 1
    delivered = desk.ledger.open_incidents()[0]
    assert delivered.notified is True
    assert delivered.slack_ts is not None
    assert desk.deliver_pending() == 0
    assert len(slack.posts()) == 1


def test_slack_500_never_raises_to_the_caller(desk: IncidentDesk, slack: SlackRecorder) -> None:
    slack.fail_next(500)

    assert raise_stall(desk) is not None
    assert desk.ledger.open_incidents()[0].notified is False


def test_a_ledger_failure_still_tells_the_operator(slack: SlackRecorder, tmp_path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.engine.dispose()
    (tmp_path / "ledger.db").unlink()
    (tmp_path / "ledger.db").mkdir()  # a directory where the database file was: every write fails
    desk = IncidentDesk(ledger, SlackNotifier(SLACK_TOKEN, SLACK_CHANNEL, base_url=slack.base_url))

    assert raise_stall(desk) is None
    assert "not recorded: the ledger is unavailable" in slack.posts()[0].body["blocks"][2]["text"]["text"]


def test_webhook_updates_are_new_messages_prefixed_update(ledger: Ledger, slack: SlackRecorder) -> None:
    desk = IncidentDesk(ledger, WebhookNotifier(slack.webhook_url))

    raise_stall(desk)
    raise_stall(desk)
    desk.resolve("telemetry")

    texts = [r.body["text"] for r in slack.calls("webhook")]
    assert texts[0].startswith("[default] SEV-2 incident #1: account telemetry stalled")
    assert texts[1].startswith("[default] update: account telemetry stalled")
    assert texts[2].startswith("[default] resolved: account telemetry stalled")


def test_notifier_choice_is_bot_then_webhook_then_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    webhook = SecretStr("https://hooks.slack.com/services/T1/B1/webhook-secret")
    both = Settings(slack_bot_token=SecretStr(SLACK_TOKEN), slack_channel="#ops", slack_webhook_url=webhook)
    token_without_channel = Settings(slack_bot_token=SecretStr(SLACK_TOKEN), slack_webhook_url=webhook)

    assert isinstance(notifier_from_settings(both, {}), SlackNotifier)
    assert isinstance(notifier_from_settings(token_without_channel, {}), WebhookNotifier)
    assert isinstance(notifier_from_settings(Settings(), {}), LogNotifier)
    shown = repr(notifier_from_settings(both, {})) + repr(notifier_from_settings(token_without_channel, {}))
    assert SLACK_TOKEN not in shown and "webhook-secret" not in shown


def test_secrets_in_evidence_never_reach_slack_or_the_log(
    desk: IncidentDesk, slack: SlackRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    slack.fail_next(500)

    raise_stall(desk, f"client said: invalid token {SLACK_TOKEN} for https://hooks.slack.com/services/T/B/x")
    desk.deliver_pending()

    recorded = json.dumps([r.body for r in slack.requests])
    assert SLACK_TOKEN not in recorded and "hooks.slack.com" not in recorded
    assert SLACK_TOKEN not in caplog.text
    assert SLACK_TOKEN not in desk.ledger.open_incidents()[0].detail
