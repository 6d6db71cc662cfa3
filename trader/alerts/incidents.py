"""The incident desk: record an incident in the ledger first, then tell the operator; never fail the caller.

An incident belongs to the account of the ledger the desk writes through (Ledger(..., account=...)): the same
fingerprint in two accounts is two incidents, opened, announced and resolved apart, and every message names it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Protocol

from trader.alerts.notifier import IncidentNotice, Notifier, encode_source, notifier_from_settings, redact
from trader.alerts.severity import IncidentKind, Severity, severity_for
from trader.ledger import Incident, Ledger
from trader.settings import Settings

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _failure(error: BaseException) -> str:
    return redact(f"{type(error).__name__}: {error}")


@contextmanager
def open_incident_desk(settings: Settings, *, migrate: bool = True) -> Iterator[IncidentDesk]:
    """The desk on a ledger of its own at DATABASE_URL for the settings' account (ACCOUNT), its connections closed
    when the work is done."""
    with Ledger(settings.database_url, account=settings.account, migrate=migrate) as ledger:
        yield IncidentDesk.on(ledger, settings)


class IncidentDesk:
    """Opens, updates and resolves incidents of the ledger's account and announces them through one Notifier.

    The ledger is the record: an announcement that fails leaves the incident `notified=False` for
    deliver_pending(). No method raises; a failure is logged and reported in the return value.
    """

    def __init__(self, ledger: Ledger, notifier: Notifier) -> None:
        self.ledger = ledger
        self.notifier = notifier

    @property
    def account(self) -> str:
        """The account every incident of this desk belongs to: its ledger's."""
        return self.ledger.account

    @classmethod
    def on(cls, ledger: Ledger, settings: Settings) -> IncidentDesk:
        """The desk on this ledger (its account's incidents) with the notifier the settings choose (Slack bot >
        webhook > log)."""
        return cls(ledger, notifier_from_settings(settings))

    def raise_incident(
        self,
        kind: IncidentKind | str,
        title: str,
        evidence: str,
        *,
        fingerprint: str,
        flow_run_url: str | None = None,
        severity: Severity | None = None,
    ) -> int | None:
        """Open (or refresh) the incident with this fingerprint and announce it; its ledger id, None if unrecorded."""
        try:
            kind = IncidentKind(kind)
            level = severity or severity_for(kind)
            source = encode_source(kind.value, flow_run_url)
            incident_id = self.ledger.open_incident(fingerprint, level, title, redact(evidence), source, _now())
            row = self._open_row(incident_id)
        except Exception as error:
            log.error(
                "incident %s (%s) of account %s could not be recorded: %s",
                fingerprint,
                title,
                self.account,
                _failure(error),
            )
            self._announce_unrecorded(kind, title, evidence, fingerprint, flow_run_url, severity)
            return None
        if row is None:  # resolved by someone else in between: nothing left to announce
            return incident_id
        notice = IncidentNotice.from_record(row)
        if row.notified:
            self._announce_update(notice, row.slack_ts)
        else:
            self._announce(notice)
        return incident_id

    def resolve(self, fingerprint: str) -> bool:
        """Resolve the open incident with this fingerprint and say so in its thread; False if none was open."""
        try:
            rows = [row for row in self.ledger.open_incidents() if row.fingerprint == fingerprint]
            resolved = self.ledger.resolve_incident(fingerprint, _now())
        except Exception as error:
            log.error("incident %s of account %s could not be resolved: %s", fingerprint, self.account, _failure(error))
            return False
        for row in rows:
            if not row.notified:  # the operator never heard of it; the ledger keeps the record
                continue
            notice = IncidentNotice.from_record(row)
            try:
                self.notifier.resolve(notice, row.slack_ts)
            except Exception as error:
                log.warning(
                    "incident #%d of account %s resolved, but the operator was not told: %s",
                    notice.id,
                    notice.account,
                    _failure(error),
                )
        return resolved

    def deliver_pending(self) -> int:
        """Announce every open incident not yet delivered (Slack was down); returns how many went out."""
        try:
            pending = [row for row in self.ledger.open_incidents() if not row.notified]
        except Exception as error:
            log.error("could not read pending incidents of account %s: %s", self.account, _failure(error))
            return 0
        return sum(self._announce(IncidentNotice.from_record(row)) for row in pending)

    def _open_row(self, incident_id: int) -> Incident | None:
        return next((row for row in self.ledger.open_incidents() if row.id == incident_id), None)

    def _announce(self, notice: IncidentNotice) -> bool:
        try:
            ts = self.notifier.send(notice)
        except Exception as error:
            log.warning(
                "incident #%d of account %s kept for later delivery: %s", notice.id, notice.account, _failure(error)
            )
            return False
        try:
            self.ledger.mark_incident_notified(notice.id, ts)
        except Exception as error:
            log.error(
                "incident #%d of account %s was announced but not marked notified: %s",
                notice.id,
                notice.account,
                _failure(error),
            )
        return True

    def _announce_unrecorded(
        self,
        kind: IncidentKind | str,
        title: str,
        evidence: str,
        fingerprint: str,
        flow_run_url: str | None,
        severity: Severity | None,
    ) -> None:
        """The ledger is down: tell the operator anyway (incident #0, no thread, nothing to deliver later)."""
        try:
            level = severity or severity_for(kind)
            note = f"{evidence}\n(not recorded: the ledger is unavailable)"
            notice = IncidentNotice(self.account, 0, fingerprint, level, str(kind), title, redact(note), flow_run_url)
            self.notifier.send(notice)
        except Exception as error:
            log.error(
                "incident %s of account %s was neither recorded nor announced: %s",
                fingerprint,
                self.account,
                _failure(error),
            )

    def _announce_update(self, notice: IncidentNotice, ts: str | None) -> None:
        try:
            self.notifier.update(notice, ts)
        except Exception as error:
            log.warning(
                "incident #%d of account %s: update not delivered: %s", notice.id, notice.account, _failure(error)
            )


class CheckLike(Protocol):
    """A checklist item's result (trader.checklists.daily.CheckResult)."""

    @property
    def item(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def evidence(self) -> str: ...


def report_checks(
    desk: IncidentDesk,
    checklist: str,
    results: Iterable[CheckLike],
    *,
    kind: IncidentKind,
    severity: Severity | None = None,
    flow_run_url: str | None = None,
) -> None:
    """One incident per failed item (fingerprint checklist:<name>:<item>), resolved once the item passes again."""
    for result in results:
        fingerprint = f"checklist:{checklist}:{result.item}"
        if result.status == "fail":
            desk.raise_incident(
                kind,
                f"{checklist} checklist: {result.item} failed",
                result.evidence,
                fingerprint=fingerprint,
                flow_run_url=flow_run_url,
                severity=severity,
            )
        else:
            desk.resolve(fingerprint)
