"""Guard trips as incidents at the runbook's severity, sent from a worker thread so a slow Slack never
delays a trading cycle.

Fingerprints are guard:<name>:warning and guard:<name>:critical: escalating resolves the warning and
opens the critical one, coming back down does the reverse, clearing resolves both.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor, wait

from trader.alerts.incidents import IncidentDesk
from trader.alerts.severity import IncidentKind
from trader.risk.monitor import ACTION_TEXT, GuardEvent

log = logging.getLogger(__name__)


def guard_kind(event: GuardEvent, open_exposure: bool) -> IncidentKind:
    """SEV-1 for a guard-triggered halt with open exposure (the severity matrix), else by level."""
    if event.level == "critical":
        if event.rule.page:
            return IncidentKind.GUARD_PAGE
        if event.rule.action == "halt" and open_exposure:
            return IncidentKind.GUARD_HALT_WITH_EXPOSURE
        return IncidentKind.GUARD_CRITICAL
    return IncidentKind.GUARD_WARNING


class GuardIncidents:
    """Opens and resolves the incidents of guard trips in order, one worker thread per bot."""

    def __init__(self, desk: IncidentDesk) -> None:
        self.desk = desk
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-incidents")
        self._pending: list[Future[None]] = []

    def report(self, event: GuardEvent, *, open_exposure: bool, evidence: str = "") -> None:
        """Queue the incident change this event calls for."""
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._pool.submit(self._apply, event, open_exposure, evidence))

    def _apply(self, event: GuardEvent, open_exposure: bool, evidence: str) -> None:
        base = f"guard:{event.guard}"
        other = "critical" if event.level == "warning" else "warning"
        if event.level == "ok":
            self.desk.resolve(f"{base}:critical")
            self.desk.resolve(f"{base}:warning")
            return
        self.desk.resolve(f"{base}:{other}")
        action = ACTION_TEXT[event.rule.action] if event.level == "critical" else "alert only"
        self.desk.raise_incident(
            guard_kind(event, open_exposure),
            f"risk guard {event.guard} {event.level}: {action}",
            "\n".join(filter(None, [event.describe(), evidence])),
            fingerprint=f"{base}:{event.level}",
        )

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued incident change is done (stop, tests)."""
        wait(self._pending, timeout=timeout)
        self._pending = [f for f in self._pending if not f.done()]

    def close(self) -> None:
        self.flush()
        self._pool.shutdown(wait=False)
