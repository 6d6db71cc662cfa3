"""Restart policy for a crashed trading-bot run: whether to start it again, after how long, and who is told.

Invariant: at most `restart_max_per_hour` automatic restarts per account in any 60 minutes, and never a restart of a
run that an operator cancelled or that ended cleanly. The restart history lives in the ledger, in the detail of one
SEV-1 "bot offline" incident per account (fingerprint `bot-restarts:<account>`): every restart, and the refusal once
the cap is reached, is an update in that incident's thread. Whatever runs the policy (a new flow run started by a
Prefect automation) can die at any moment; the next one reads the same history. Resolving the incident re-arms
automatic restarts (the operator has looked at it).

Backoff: a run that crashed after trading for at least `stable_after_seconds` is restarted at once (the runbook:
"Engine down: restart immediately"); a run that crashed sooner is a crash loop and waits base * 2^n seconds (n =
restarts already made within the hour), capped at `max_delay_seconds`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from trader.alerts.incidents import IncidentDesk, open_incident_desk
from trader.alerts.severity import IncidentKind
from trader.ledger import Ledger
from trader.settings import Settings

WINDOW = timedelta(hours=1)
# One line per restart in the incident's detail; the policy counts the ones of the last hour.
_ENTRY = re.compile(r"^- (?P<at>\d{4}-\d\d-\d\dT\S+) restart \d+/\d+", re.MULTILINE)
# A session that ended by itself (not "crashed"/"running"): the run was not lost, whatever Prefect says later.
CLEAN_SESSION_ENDS = ("stopped", "stood_down")
# Prefect state types after which a run is never restarted: an operator's cancel, or a run that had finished
# (PrefectHQ/prefect#18653: a late heartbeat flipped Completed runs to Crashed).
NOT_RESTARTED_AFTER = ("CANCELLING", "CANCELLED", "COMPLETED")

Verdict = Literal["restart", "skip", "refuse"]


def restarts_fingerprint(account: str) -> str:
    """The incident that holds an account's restart history (one thread per account)."""
    return f"bot-restarts:{account}"


@dataclass(frozen=True)
class RestartPolicy:
    """How many restarts an hour and how long to wait before each."""

    max_per_hour: int = 5
    base_delay_seconds: float = 2.0
    max_delay_seconds: float = 30.0
    stable_after_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartPolicy:
        """The policy with RESTART_MAX_PER_HOUR and RESTART_BACKOFF_MAX_SECONDS from the settings."""
        return cls(max_per_hour=settings.restart_max_per_hour, max_delay_seconds=settings.restart_backoff_max_seconds)

    def delay_seconds(self, restarts_in_window: int, ran_seconds: float) -> float:
        """Seconds to wait before the next restart: 0 after a stable run, else exponential in the hour's restarts."""
        if ran_seconds >= self.stable_after_seconds:
            return 0.0
        return min(self.base_delay_seconds * 2**restarts_in_window, self.max_delay_seconds)


@dataclass(frozen=True)
class CrashedRun:
    """What the orchestrator and the ledger say about the run that crashed."""

    flow_run_id: str
    state_history: tuple[str, ...] = ()  # Prefect state types, oldest first, e.g. ("SCHEDULED", ..., "CRASHED")
    ran_seconds: float = 0.0  # from its start to its crash
    session_status: str | None = None  # its trading session's status in the ledger, None if it never opened one
    state_message: str | None = None
    holder_alive: bool = False  # its process still holds the account's lease: Prefect's Crashed is false
    other_holder: str | None = None  # another live bot holds the account (a --standby took over): who
    restarted_by: str | None = None  # another run already restarts it for the same Crashed event (a delivered copy)


@dataclass(frozen=True)
class RestartDecision:
    """The policy's answer: restart (after delay_seconds), skip (not a crash to undo) or refuse (cap reached)."""

    verdict: Verdict
    reason: str
    attempt: int = 0  # this restart's number within the hour (1-based), 0 when not restarting
    delay_seconds: float = 0.0
    restarts_in_window: int = 0
    history: tuple[datetime, ...] = field(default=())

    @property
    def restart(self) -> bool:
        """True when the new run should trade."""
        return self.verdict == "restart"


def lease_wait_seconds(settings: Settings) -> float:
    """How long a restarted bot waits for the dead holder's lease (bot.start breaks it at once if its pid is gone)."""
    return settings.lease_ttl_seconds + 10


def restart_history(detail: str | None, now: datetime) -> list[datetime]:
    """Times of the restarts recorded in the incident detail that fall within the last hour, oldest first."""
    if not detail:
        return []
    times = []
    for match in _ENTRY.finditer(detail):
        try:
            at = datetime.fromisoformat(match["at"])
        except ValueError:
            continue
        if now - at < WINDOW:
            times.append(at)
    return sorted(times)


def decide(policy: RestartPolicy, crashed: CrashedRun, history: list[datetime]) -> RestartDecision:
    """Restart, skip or refuse, from the crashed run's facts and the restarts of the last hour."""
    if crashed.restarted_by is not None:
        return RestartDecision(
            "skip",
            f"run {crashed.flow_run_id} is already restarted by run {crashed.restarted_by} for the same Crashed event "
            "(the orchestrator delivered that event twice): this copy does not trade",
        )
    stopped_by = next((s for s in crashed.state_history if s.upper() in NOT_RESTARTED_AFTER), None)
    if stopped_by is not None:
        why = "an operator cancelled it" if stopped_by.upper() != "COMPLETED" else "it had completed"
        return RestartDecision("skip", f"run {crashed.flow_run_id} is not restarted: {why} ({stopped_by})")
    if crashed.holder_alive:
        return RestartDecision(
            "skip",
            f"run {crashed.flow_run_id} is marked Crashed but its process still holds the lease and renews it "
            "(a zombie verdict during an orchestrator outage?): not restarted, it trades on",
        )
    if crashed.other_holder is not None:
        return RestartDecision(
            "skip",
            f"run {crashed.flow_run_id} is not restarted: another bot already trades the account "
            f"({crashed.other_holder})",
        )
    if crashed.session_status in CLEAN_SESSION_ENDS:
        return RestartDecision(
            "skip",
            f"run {crashed.flow_run_id} is not restarted: its trading session ended {crashed.session_status}",
        )
    count = len(history)
    if count >= policy.max_per_hour:
        return RestartDecision(
            "refuse",
            f"bot offline: {count} automatic restarts within the last hour (RESTART_MAX_PER_HOUR="
            f"{policy.max_per_hour}); run {crashed.flow_run_id} is not restarted. Start the bot by hand once the "
            "cause is fixed, and resolve this incident to re-arm automatic restarts",
            restarts_in_window=count,
            history=tuple(history),
        )
    delay = policy.delay_seconds(count, crashed.ran_seconds)
    return RestartDecision(
        "restart",
        f"run {crashed.flow_run_id} crashed after {crashed.ran_seconds:.0f} s; "
        f"restart {count + 1}/{policy.max_per_hour} within the hour after {delay:.0f} s",
        attempt=count + 1,
        delay_seconds=delay,
        restarts_in_window=count,
        history=tuple(history),
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _entry_lines(detail: str | None, now: datetime) -> list[str]:
    """The detail's restart lines still within the hour (older ones drop out, so the detail stays short)."""
    if not detail:
        return []
    keep = []
    for line in detail.splitlines():
        match = _ENTRY.match(line)
        if match is None:
            continue
        try:
            at = datetime.fromisoformat(match["at"])
        except ValueError:
            continue
        if now - at < WINDOW:
            keep.append(line)
    return keep


class RestartSupervisor:
    """Applies the RestartPolicy for one account and records each restart (or the refusal) in the incident thread."""

    def __init__(self, desk: IncidentDesk, account: str, policy: RestartPolicy) -> None:
        self.desk = desk
        self.account = account
        self.policy = policy
        self.fingerprint = restarts_fingerprint(account)

    @classmethod
    @contextmanager
    def opened(cls, settings: Settings) -> Iterator[RestartSupervisor]:
        """On a ledger of its own at DATABASE_URL (closed when done), the settings' notifier, ACCOUNT and
        RESTART_MAX_PER_HOUR."""
        with open_incident_desk(settings) as desk:
            yield cls(desk, settings.account, RestartPolicy.from_settings(settings))

    @property
    def ledger(self) -> Ledger:
        """The ledger the history lives in."""
        return self.desk.ledger

    def _open_detail(self) -> str | None:
        rows = [row for row in self.ledger.open_incidents() if row.fingerprint == self.fingerprint]
        return rows[-1].detail if rows else None

    def history(self, now: datetime | None = None) -> list[datetime]:
        """The automatic restarts of the last hour, as recorded in the ledger."""
        return restart_history(self._open_detail(), now or _now())

    def session_status(self, flow_run_id: str) -> str | None:
        """The status of the crashed run's newest trading session, None if it never opened one."""
        session = self.ledger.find_session_by_flow_run(flow_run_id)
        return session.status if session is not None else None

    def holder_alive(self, flow_run_id: str, crashed_at: datetime, *, wait_seconds: float = 12.0) -> bool:
        """True when the crashed run's process provably lives: it still holds the lease and renews it after Prefect
        marked it Crashed (a zombie verdict during an orchestrator outage). A live bot renews at least every TTL/3,
        so wait_seconds should exceed that; a holder whose pid is gone on this host is dead at once."""
        deadline = time.monotonic() + wait_seconds
        while True:
            lease = self.ledger.current_lease(self.account)
            if lease is None or lease.holder.flow_run_id != flow_run_id or lease.expired():
                return False
            if lease.holder.is_gone_here():
                return False
            if lease.renewed_at > crashed_at:
                return True
            if time.monotonic() >= deadline:
                return False  # hung or dead elsewhere: its lease expires on its own, the new run waits for that
            time.sleep(0.5)

    def other_holder(self, flow_run_id: str) -> str | None:
        """Who holds the account's unexpired lease when that is not the crashed run (a standby that took over)."""
        lease = self.ledger.current_lease(self.account)
        if lease is None or lease.expired() or lease.holder.flow_run_id == flow_run_id or lease.holder.is_gone_here():
            return None
        return lease.holder.describe()

    def decide_and_record(
        self,
        crashed: CrashedRun,
        *,
        new_run_id: str | None,
        new_run_url: str | None = None,
        now: datetime | None = None,
    ) -> RestartDecision:
        """Decide for this crashed run and write the restart (or the refusal) as an update of the SEV-1 incident."""
        now = now or _now()
        detail = self._open_detail()
        decision = decide(self.policy, crashed, restart_history(detail, now))
        if decision.verdict == "skip":
            return decision
        lines = _entry_lines(detail, now)
        where = new_run_url or (f"run {new_run_id}" if new_run_id else "a new run")
        if decision.restart:
            cause = _clip(crashed.state_message or "no state message", 80)
            lines.append(
                f"- {now.isoformat()} restart {decision.attempt}/{self.policy.max_per_hour}: run {crashed.flow_run_id}"
                f" crashed after {crashed.ran_seconds:.0f} s ({cause}); {where} starts after"
                f" {decision.delay_seconds:.0f} s backoff"
            )
            latest = f"latest: restart {decision.attempt}/{self.policy.max_per_hour} by {where}"
        else:
            latest = decision.reason
        header = (
            f"trading-bot on account {self.account} crashed and is restarted automatically "
            f"(at most {self.policy.max_per_hour} per hour, RESTART_MAX_PER_HOUR)."
        )
        self.desk.raise_incident(
            IncidentKind.BOT_OFFLINE,
            f"bot offline: trading-bot crashed on account {self.account}",
            "\n".join([header, latest, *lines]),
            fingerprint=self.fingerprint,
            flow_run_url=new_run_url,
        )
        return decision
