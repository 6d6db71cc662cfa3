"""The flow hooks on a real (test-harness) Prefect server, posting through the real slack-sdk to the recorder."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from uuid import uuid4

import pytest
from prefect import flow

from flows.hooks import incident_on_crashed, incident_on_failure, resolve_on_completion
from trader.ledger.ledger import Ledger
from trader.testing.slack_recorder import SlackRecorder

pytestmark = pytest.mark.usefixtures("prefect_api")

SECRET = "xoxb-000000-test-secret-token"  # the recorder's token, set as SLACK_BOT_TOKEN by alerts_env


@flow(
    name="trading-bot",
    on_failure=[incident_on_failure],
    on_crashed=[incident_on_crashed],
    on_completion=[resolve_on_completion],
    persist_result=False,
)
def bot_stand_in(fail: bool) -> str:
    """Stands in for the trading-bot flow: fails on demand."""
    if fail:
        raise RuntimeError("exchange answered 503 on /orders for 5 minutes")
    return "ok"


def test_a_failed_flow_posts_the_runbook_block_kit_message(
    alerts_env: str, slack: SlackRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    state = bot_stand_in(fail=True, return_state=True)

    assert state.is_failed()
    (post,) = slack.posts()
    blocks = post.body["blocks"]
    header, what, evidence, actions, _context, button_row = blocks
    assert header["text"]["text"] == "[default] SEV-1: flow trading-bot failed"
    assert "Bot offline" in what["text"]["text"]
    assert "RuntimeError: exchange answered 503 on /orders for 5 minutes" in evidence["text"]["text"]
    assert "Halt trading if not already stopped" in actions["text"]["text"]
    assert "confirm balances" in actions["text"]["text"]
    url = button_row["elements"][0]["url"]
    assert url.endswith(f"/runs/flow-run/{state.state_details.flow_run_id}")
    assert url.startswith("http")
    assert post.body["text"].startswith("[default] SEV-1 incident #1: flow trading-bot failed - Flow run encountered")
    assert url in post.body["text"]
    assert SECRET not in json.dumps([r.body for r in slack.requests])
    assert SECRET not in caplog.text
    incident = Ledger(alerts_env).open_incidents()[0]
    assert (incident.severity, incident.notified, incident.slack_ts) == ("SEV-1", True, incident.slack_ts)


def test_failing_again_replies_in_the_thread_and_passing_resolves_it(alerts_env: str, slack: SlackRecorder) -> None:
    bot_stand_in(fail=True, return_state=True)
    bot_stand_in(fail=True, return_state=True)
    bot_stand_in(fail=False, return_state=True)

    root, update, resolved = slack.posts()
    assert update.body["thread_ts"] == resolved.body["thread_ts"]
    assert update.body["text"].startswith("[default] update: flow trading-bot failed happened again")
    assert resolved.body["text"].startswith(
        "[default] resolved: flow trading-bot failed (passes again; SEV-1 incident #1)"
    )
    assert Ledger(alerts_env).open_incidents() == []
    assert "thread_ts" not in root.body
    assert slack.calls("chat.update")[0].body["ts"] == update.body["thread_ts"]  # the root, marked resolved


def test_the_crash_hook_of_another_flow_opens_a_sev2_and_never_raises(alerts_env: str, slack: SlackRecorder) -> None:
    run = SimpleNamespace(id=uuid4(), name="brave-otter")
    crashed = SimpleNamespace(name="Crashed", message="Execution was aborted by an interrupt signal.")

    incident_on_crashed(SimpleNamespace(name="daily-checklist"), run, crashed)
    incident_on_crashed(object(), object(), None)  # nonsense in: logged, never raised

    (post,) = slack.posts()
    assert post.body["blocks"][0]["text"]["text"] == "[default] SEV-2: flow daily-checklist crashed"
    assert "aborted by an interrupt signal" in post.body["blocks"][2]["text"]["text"]


def test_hooks_never_raise_when_slack_is_down(alerts_env: str, slack: SlackRecorder) -> None:
    slack.go_down()

    state = bot_stand_in(fail=True, return_state=True)

    assert state.is_failed()
    assert Ledger(alerts_env).open_incidents()[0].notified is False
