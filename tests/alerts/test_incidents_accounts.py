"""Incidents per account: each desk writes through its account's ledger, and every message names the account."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from trader.alerts import IncidentDesk, IncidentKind, LogNotifier, SlackNotifier
from trader.alerts.incidents import open_incident_desk
from trader.ledger.ledger import Ledger
from trader.settings import Settings
from trader.testing.slack_recorder import RecordedRequest, SlackRecorder

SLACK_TOKEN = "xoxb-000000-test-secret-token"  # the recorder fixture's token (tests/alerts/conftest.py)
SLACK_CHANNEL = "#trading-alerts"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """One ledger database both accounts share: a SQLite file, or the session's PostgreSQL database."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def ledgers(ledger_url: str) -> Iterator[dict[str, Ledger]]:
    """The ledgers of accounts alpha and beta on the same database."""
    opened = {account: Ledger(ledger_url, account=account) for account in ("alpha", "beta")}
    yield opened
    for ledger in opened.values():
        ledger.dispose()


@pytest.fixture
def fingerprint() -> str:
    """A fingerprint no other test uses (the PostgreSQL database lives for the whole session)."""
    return f"telemetry-{uuid.uuid4().hex[:8]}"


def slack_desk(ledger: Ledger, slack: SlackRecorder) -> IncidentDesk:
    return IncidentDesk(ledger, SlackNotifier(SLACK_TOKEN, SLACK_CHANNEL, base_url=slack.base_url))


def raise_stall(desk: IncidentDesk, fingerprint: str) -> int | None:
    return desk.raise_incident(
        IncidentKind.TELEMETRY_STALLED, "account telemetry stalled", "no balance snapshot", fingerprint=fingerprint
    )


def open_with(ledger: Ledger, fingerprint: str) -> list[int | None]:
    return [row.id for row in ledger.open_incidents() if row.fingerprint == fingerprint]


def header(post: RecordedRequest) -> str:
    return str(post.body["blocks"][0]["text"]["text"])


def test_same_fingerprint_in_two_accounts_is_two_incidents_each_named_in_slack(
    ledgers: dict[str, Ledger], slack: SlackRecorder, fingerprint: str
) -> None:
    alpha, beta = slack_desk(ledgers["alpha"], slack), slack_desk(ledgers["beta"], slack)

    alpha_id = raise_stall(alpha, fingerprint)
    beta_id = raise_stall(beta, fingerprint)

    assert alpha_id is not None and beta_id is not None and alpha_id != beta_id
    assert open_with(ledgers["alpha"], fingerprint) == [alpha_id]
    assert open_with(ledgers["beta"], fingerprint) == [beta_id]
    first, second = slack.posts()
    assert "thread_ts" not in first.body and "thread_ts" not in second.body  # two roots, not one thread
    assert header(first) == "[alpha] SEV-2: account telemetry stalled"
    assert header(second) == "[beta] SEV-2: account telemetry stalled"
    assert first.body["text"].startswith(f"[alpha] SEV-2 incident #{alpha_id}: account telemetry stalled")
    assert second.body["text"].startswith(f"[beta] SEV-2 incident #{beta_id}: account telemetry stalled")
    assert "*Account:* alpha" in first.body["blocks"][1]["text"]["text"]
    assert "account beta" in second.body["blocks"][4]["elements"][0]["text"]


def test_resolving_one_account_leaves_the_other_accounts_incident_open(
    ledgers: dict[str, Ledger], slack: SlackRecorder, fingerprint: str
) -> None:
    alpha, beta = slack_desk(ledgers["alpha"], slack), slack_desk(ledgers["beta"], slack)
    raise_stall(alpha, fingerprint)
    beta_id = raise_stall(beta, fingerprint)
    alpha_ts = ledgers["alpha"].open_incidents()[-1].slack_ts

    assert alpha.resolve(fingerprint) is True

    assert open_with(ledgers["alpha"], fingerprint) == []
    assert open_with(ledgers["beta"], fingerprint) == [beta_id]
    reply = slack.posts()[-1]
    assert reply.body["thread_ts"] == alpha_ts
    assert reply.body["text"].startswith("[alpha] resolved: account telemetry stalled")
    (marked,) = slack.calls("chat.update")
    assert marked.body["ts"] == alpha_ts
    assert header(marked) == "[alpha] RESOLVED: account telemetry stalled"


def test_an_update_replies_in_its_own_accounts_thread_naming_the_account(
    ledgers: dict[str, Ledger], slack: SlackRecorder, fingerprint: str
) -> None:
    alpha, beta = slack_desk(ledgers["alpha"], slack), slack_desk(ledgers["beta"], slack)
    raise_stall(alpha, fingerprint)
    raise_stall(beta, fingerprint)
    beta_ts = ledgers["beta"].open_incidents()[-1].slack_ts

    raise_stall(beta, fingerprint)

    update = slack.posts()[-1]
    assert update.body["thread_ts"] == beta_ts
    assert update.body["text"].startswith("[beta] update: account telemetry stalled happened again")


def test_open_incident_desk_writes_through_the_settings_account(
    sqlite_url: str, slack: SlackRecorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLACK_API_URL", slack.base_url)
    settings = Settings(
        account="alpha",
        database_url=sqlite_url,
        state_dir=tmp_path / "state",
        slack_bot_token=SecretStr(SLACK_TOKEN),
        slack_channel=SLACK_CHANNEL,
        slack_webhook_url=None,
    )

    with open_incident_desk(settings) as desk:
        incident_id = raise_stall(desk, "checklist:daily:heartbeat")
        assert desk.account == "alpha"

    with Ledger(sqlite_url, account="alpha") as alpha, Ledger(sqlite_url, account="beta") as beta:
        assert [row.id for row in alpha.open_incidents()] == [incident_id]
        assert beta.open_incidents() == []
    assert header(slack.posts()[0]) == "[alpha] SEV-2: account telemetry stalled"


def test_log_notifier_lines_name_the_account(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, fingerprint: str
) -> None:
    caplog.set_level(logging.WARNING, logger="trader.alerts")
    with Ledger(sqlite_url, account="beta") as ledger:
        desk = IncidentDesk(ledger, LogNotifier())

        raise_stall(desk, fingerprint)
        raise_stall(desk, fingerprint)
        desk.resolve(fingerprint)

    lines = [record.getMessage() for record in caplog.records if record.name == "trader.alerts.notifier"]
    assert len(lines) == 3
    assert lines[0].startswith("incident: [beta] SEV-2 incident #")
    assert "[beta] update: account telemetry stalled" in lines[1]
    assert "[beta] resolved: account telemetry stalled" in lines[2]


def test_an_unrecorded_incident_still_names_its_account(slack: SlackRecorder, tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", account="alpha")
    ledger.engine.dispose()
    (tmp_path / "ledger.db").unlink()
    (tmp_path / "ledger.db").mkdir()  # a directory where the database file was: every write fails
    desk = slack_desk(ledger, slack)

    assert raise_stall(desk, "telemetry") is None

    (post,) = slack.posts()
    assert header(post) == "[alpha] SEV-2: account telemetry stalled"
    assert post.body["text"].startswith("[alpha] SEV-2 incident #0:")
