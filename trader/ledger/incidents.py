"""The Ledger's incidents (opened, refreshed, resolved, announced) and the runs of the operations checklists, each
of the Ledger's account (an incident's fingerprint is looked up within it).

A severity is stored as text and must be one of INCIDENT_SEVERITIES (trader/alerts/severity.py owns what the levels
mean; a test keeps its Severity type and this tuple equal).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, get_args

from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from trader.ledger.base import LedgerBase, LedgerError, require
from trader.ledger.models import INCIDENT_SEVERITIES, ChecklistRun, ChecklistStatus, Incident


class IncidentsMixin(LedgerBase):
    def open_incident(self, fingerprint: str, severity: str, title: str, detail: str, source: str, at: datetime) -> int:
        """Open an incident, or refresh the open one with the same fingerprint; returns its id."""
        require("incident severity", severity, INCIDENT_SEVERITIES)
        with self._transaction() as session:
            row = session.exec(_open_with(self.account, fingerprint)).first()
            if row is None:
                row = Incident(
                    account=self.account,
                    fingerprint=fingerprint,
                    severity=severity,
                    title=title,
                    detail=detail,
                    source=source,
                    status="open",
                    opened_at=at,
                    updated_at=at,
                )
                session.add(row)
            else:
                row.detail = detail
                row.updated_at = at
            session.flush()
            assert row.id is not None
            return row.id

    def resolve_incident(self, fingerprint: str, at: datetime) -> bool:
        """Resolve the open incident with this fingerprint; False if none was open."""
        with self._transaction() as session:
            rows = session.exec(_open_with(self.account, fingerprint)).all()
            for row in rows:
                row.status = "resolved"
                row.resolved_at = at
                row.updated_at = at
        return bool(rows)

    def mark_incident_notified(self, incident_id: int, slack_ts: str | None = None) -> None:
        """Record that the operator was told about this incident (and the Slack message, if any)."""
        with self._transaction() as session:
            row = session.get(Incident, incident_id)
            if row is None or row.account != self.account:
                raise LedgerError(f"no incident {incident_id} of account {self.account} in the ledger")
            row.notified = True
            row.slack_ts = slack_ts or row.slack_ts

    def open_incidents(self) -> list[Incident]:
        """Incidents not yet resolved, oldest first."""
        query = select(Incident).where(Incident.account == self.account, Incident.status == "open")
        query = query.order_by(col(Incident.opened_at), col(Incident.id))
        with self._transaction() as session:
            return list(session.exec(query).all())

    def incidents_opened_between(self, start: datetime, end: datetime) -> list[Incident]:
        """Incidents opened in [start, end), resolved or not, oldest first."""
        query = select(Incident).where(
            Incident.account == self.account, col(Incident.opened_at) >= start, col(Incident.opened_at) < end
        )
        with self._transaction() as session:
            return list(session.exec(query.order_by(col(Incident.opened_at), col(Incident.id))).all())

    def record_checklist_run(
        self,
        checklist: str,
        status: str,
        results: list[dict[str, Any]],
        started_at: datetime,
        finished_at: datetime | None,
        flow_run_id: str | None = None,
    ) -> int:
        """Store one run of an operations checklist with its per-check results; returns its id."""
        require("checklist status", status, get_args(ChecklistStatus))
        row = ChecklistRun(
            account=self.account,
            checklist=checklist,
            flow_run_id=flow_run_id,
            started_at=started_at,
            finished_at=finished_at,
            status=status,
            results_json=json.dumps(results, default=str),
        )
        with self._transaction() as session:
            session.add(row)
            session.flush()
            assert row.id is not None
            return row.id

    def checklist_runs(self, checklist: str | None = None) -> list[ChecklistRun]:
        """Stored checklist runs, all or of one checklist, newest first."""
        query = select(ChecklistRun).where(ChecklistRun.account == self.account)
        query = query.order_by(col(ChecklistRun.started_at).desc(), col(ChecklistRun.id).desc())
        if checklist is not None:
            query = query.where(ChecklistRun.checklist == checklist)
        with self._transaction() as session:
            return list(session.exec(query).all())


def _open_with(account: str, fingerprint: str) -> SelectOfScalar[Incident]:
    query = select(Incident).where(
        Incident.account == account, Incident.fingerprint == fingerprint, Incident.status == "open"
    )
    return query.order_by(col(Incident.id))
