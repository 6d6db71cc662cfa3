"""The restart policy against a real ledger (SQLite, PostgreSQL) and the Slack recorder: backoff, cap, SEV-1 thread."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from trader.alerts import IncidentDesk, SlackNotifier
from trader.ledger.lease import Holder
from trader.ledger.ledger import Ledger
from trader.supervision import CrashedRun, RestartPolicy, RestartSupervisor, decide, restarts_fingerprint
from trader.testing.slack_recorder import SlackRecorder

SLACK_TOKEN = "xoxb-000000-test-secret-token"
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
QUICK = 3.0  # seconds a crash-looping run lived
POLICY = RestartPolicy(max_per_hour=3, base_delay_seconds=5, max_delay_seconds=60, stable_after_seconds=60)


@pytest.fixture
def slack() -> Iterator[SlackRecorder]:
    with SlackRecorder(token=SLACK_TOKEN) as recorder:
        yield recorder


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url")
    ledger = Ledger(url)
    yield ledger
    ledger.dispose()


def supervisor(ledger: Ledger, slack: SlackRecorder, policy: RestartPolicy = POLICY) -> RestartSupervisor:
    """A fresh supervisor each time, as each restarted flow run builds its own: the history is only in the ledger."""
    desk = IncidentDesk(
        Ledger(ledger.database_url, migrate=False), SlackNotifier(SLACK_TOKEN, "#ops", base_url=slack.base_url)
    )
    return RestartSupervisor(desk, "default", policy)


def crash(number: int, ran: float = QUICK) -> CrashedRun:
    return CrashedRun(f"run-{number}", ("SCHEDULED", "PENDING", "RUNNING", "CRASHED"), ran, "running", "exit -9")


def test_crash_loop_backs_off_exponentially_and_a_stable_run_restarts_at_once() -> None:
    policy = RestartPolicy(max_per_hour=10, base_delay_seconds=5, max_delay_seconds=60, stable_after_seconds=60)
    history: list[datetime] = []
    delays = []
    for number in range(7):
        decision = decide(policy, crash(number), history)
        delays.append(decision.delay_seconds)
        history.append(T0 + timedelta(seconds=number))

    assert delays == [5, 10, 20, 40, 60, 60, 60]
    assert decide(policy, crash(99, ran=600), history).delay_seconds == 0


def test_the_backoff_cap_and_the_hourly_cap_come_from_the_settings() -> None:
    from trader.settings import Settings

    policy = RestartPolicy.from_settings(Settings(restart_max_per_hour=7, restart_backoff_max_seconds=4))

    assert (policy.max_per_hour, policy.max_delay_seconds) == (7, 4)
    assert [policy.delay_seconds(n, QUICK) for n in range(4)] == [2, 4, 4, 4]
    assert RestartPolicy.from_settings(Settings()).max_delay_seconds == 30


def test_cap_refuses_and_every_restart_is_an_update_of_one_sev1_thread(ledger: Ledger, slack: SlackRecorder) -> None:
    decisions = [
        supervisor(ledger, slack).decide_and_record(crash(n), new_run_id=f"new-{n}", now=T0 + timedelta(minutes=n))
        for n in range(4)
    ]

    assert [d.verdict for d in decisions] == ["restart", "restart", "restart", "refuse"]
    assert [d.attempt for d in decisions[:3]] == [1, 2, 3]
    assert [d.delay_seconds for d in decisions[:3]] == [5, 10, 20]
    (incident,) = [row for row in ledger.open_incidents() if row.fingerprint == restarts_fingerprint("default")]
    assert incident.severity == "SEV-1"
    assert incident.title.startswith("bot offline")
    root, *replies = slack.posts()
    assert "thread_ts" not in root.body
    assert len(replies) == 3  # restarts 2 and 3, then the refusal
    assert all(reply.body["thread_ts"] == incident.slack_ts for reply in replies)
    assert "restart 3/3" in replies[1].body["text"]
    assert "RESTART_MAX_PER_HOUR=3" in replies[2].body["text"]
    assert incident.detail.count("\n- ") == 3


def test_restarts_older_than_an_hour_no_longer_count(ledger: Ledger, slack: SlackRecorder) -> None:
    for n in range(3):
        supervisor(ledger, slack).decide_and_record(crash(n), new_run_id=f"new-{n}", now=T0 + timedelta(minutes=n))

    later = supervisor(ledger, slack).decide_and_record(crash(9), new_run_id="new-9", now=T0 + timedelta(minutes=61))

    assert later.verdict == "restart"
    assert later.attempt == 2  # only the restart at minute 2 is still within the hour
    (incident,) = ledger.open_incidents()
    assert incident.detail.count("\n- ") == 2


def test_resolving_the_incident_rearms_restarts(ledger: Ledger, slack: SlackRecorder) -> None:
    for n in range(4):
        supervisor(ledger, slack).decide_and_record(crash(n), new_run_id=f"new-{n}", now=T0 + timedelta(minutes=n))
    supervisor(ledger, slack).desk.resolve(restarts_fingerprint("default"))

    again = supervisor(ledger, slack).decide_and_record(crash(5), new_run_id="new-5", now=T0 + timedelta(minutes=5))

    assert again.verdict == "restart"
    assert again.attempt == 1


@pytest.mark.parametrize(
    ("history", "session", "expected"),
    [
        (("RUNNING", "CANCELLING", "CRASHED"), "running", "operator cancelled"),
        (("RUNNING", "CANCELLED", "CRASHED"), "running", "operator cancelled"),
        (("RUNNING", "COMPLETED", "CRASHED"), "stopped", "completed"),  # PrefectHQ/prefect#18653
        (("RUNNING", "CRASHED"), "stopped", "ended stopped"),
        (("RUNNING", "CRASHED"), "stood_down", "ended stood_down"),
    ],
)
def test_a_cancelled_or_finished_run_is_never_restarted_and_nothing_is_written(
    ledger: Ledger, slack: SlackRecorder, history: tuple[str, ...], session: str, expected: str
) -> None:
    run = CrashedRun("run-x", history, 600.0, session)

    decision = supervisor(ledger, slack).decide_and_record(run, new_run_id="new-x", now=T0)

    assert decision.verdict == "skip"
    assert expected.split()[-1] in decision.reason
    assert ledger.open_incidents() == []
    assert slack.posts() == []


def test_a_copy_of_a_restart_stands_down_whatever_else_is_true(ledger: Ledger, slack: SlackRecorder) -> None:
    """One Crashed event delivered twice started two runs: the later one writes nothing and never trades."""
    run = CrashedRun("run-x", ("RUNNING", "CRASHED"), 5.0, "running", restarted_by="run-first")

    decision = supervisor(ledger, slack).decide_and_record(run, new_run_id="run-copy", now=T0)

    assert decision.verdict == "skip" and not decision.restart
    assert "already restarted by run run-first" in decision.reason
    assert ledger.open_incidents() == [] and slack.posts() == []
    assert decide(POLICY, CrashedRun("run-x", ("RUNNING", "CRASHED"), 5.0, "running"), []).restart  # without it: yes


def test_a_run_whose_process_still_holds_the_lease_is_not_restarted(ledger: Ledger, slack: SlackRecorder) -> None:
    """A false Crashed (the zombie automation after an API outage): the holder renews, so no second bot starts."""
    ledger.acquire_lease("default", Holder.this_process("bot", flow_run_id="run-alive"), 30)
    watcher = supervisor(ledger, slack)

    alive = watcher.holder_alive("run-alive", datetime.now(UTC) - timedelta(seconds=5))
    decision = decide(POLICY, CrashedRun("run-alive", ("RUNNING", "CRASHED"), 600.0, "running", holder_alive=alive), [])

    assert alive is True
    assert decision.verdict == "skip" and "still holds the lease" in decision.reason


def test_a_dead_holder_whose_last_renewal_predates_the_crash_is_restarted(ledger: Ledger, slack: SlackRecorder) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer exists on this host, as after a SIGKILL
    dead = Holder(kind="bot", host=socket.gethostname(), pid=child.pid, flow_run_id="run-dead")
    ledger.acquire_lease("default", dead, 30)
    watcher = supervisor(ledger, slack)

    started = time.monotonic()
    assert watcher.holder_alive("run-dead", datetime.now(UTC) - timedelta(seconds=5), wait_seconds=30) is False
    assert time.monotonic() - started < 5  # the pid is gone on this host: no need to wait for a renewal
    assert watcher.holder_alive("run-other", datetime.now(UTC) - timedelta(seconds=5)) is False


def test_a_hung_holder_that_stops_renewing_is_restarted(ledger: Ledger, slack: SlackRecorder) -> None:
    """Alive on this host (this very process) but no renewal since the crash verdict: hung, so it is replaced."""
    ledger.acquire_lease("default", Holder.this_process("bot", flow_run_id="run-hung"), 30)
    watcher = supervisor(ledger, slack)

    assert watcher.holder_alive("run-hung", datetime.now(UTC) + timedelta(seconds=1), wait_seconds=1.5) is False


def test_a_crashed_run_whose_account_a_standby_already_trades_is_not_restarted(
    ledger: Ledger, slack: SlackRecorder
) -> None:
    """The standby took over before the automation fired: a restart would only wait out the TTL and be refused."""
    ledger.acquire_lease("default", Holder.this_process("bot", flow_run_id=None), 30)  # the standby (a process)
    watcher = supervisor(ledger, slack)
    other = watcher.other_holder("run-crashed")

    decision = watcher.decide_and_record(
        CrashedRun("run-crashed", ("RUNNING", "CRASHED"), 600.0, "running", other_holder=other),
        new_run_id="new-y",
        now=T0,
    )

    assert other is not None and "bot on host" in other
    assert decision.verdict == "skip" and "another bot already trades the account" in decision.reason
    assert ledger.open_incidents() == [] and slack.posts() == []  # no "bot offline": the account is traded
    standby = ledger.current_lease("default")
    assert standby is not None and ledger.release_lease(standby.fence)
    assert watcher.other_holder("run-crashed") is None  # a released (expired) lease is nobody's
