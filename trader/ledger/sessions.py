"""The Ledger's trading sessions: started, alive (heartbeat), ended."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import get_args

from sqlmodel import Session, col, select

from trader.ledger.base import LedgerBase, LedgerError, now, require
from trader.ledger.models import SessionMode, TradingSession

ENDED_STATUSES = ("stopped", "crashed", "recovered", "stood_down")


class SessionsMixin(LedgerBase):
    def start_session(
        self, profile: str, broker: str, mode: str, flow_run_id: str | None = None, *, at: datetime | None = None
    ) -> str:
        """Open a trading session and return its id."""
        require("session mode", mode, get_args(SessionMode))
        row = TradingSession(
            id=uuid.uuid4().hex,
            profile=profile,
            broker=broker,
            mode=mode,
            status="running",
            started_at=at or now(),
            cycles=0,
            flow_run_id=flow_run_id,
        )
        with self._transaction() as session:
            session.add(row)
        return row.id

    def heartbeat(
        self, session_id: str, cycles: int, market_time: datetime | None = None, *, at: datetime | None = None
    ) -> None:
        """Record that the session is alive after this many cycles: wall-clock `at` (default now), the market time
        beside it (replay time is years behind the wall clock; freshness checks read last_heartbeat_at)."""
        with self._transaction() as session:
            row = _session_row(session, session_id)
            row.cycles = cycles
            row.last_heartbeat_at = at or now()
            row.last_market_time = market_time

    def end_session(self, session_id: str, status: str, note: str | None = None, *, at: datetime | None = None) -> None:
        """Close the session as stopped, crashed or recovered."""
        require("session status", status, ENDED_STATUSES)
        with self._transaction() as session:
            row = _session_row(session, session_id)
            row.status = status
            row.ended_at = at or now()
            row.note = note

    def get_session(self, session_id: str) -> TradingSession:
        """The trading session with this id."""
        with self._transaction() as session:
            return _session_row(session, session_id)

    def list_sessions(self) -> list[TradingSession]:
        """Every trading session, oldest first."""
        with self._transaction() as session:
            return list(session.exec(select(TradingSession).order_by(col(TradingSession.started_at))).all())

    def find_session_by_flow_run(self, flow_run_id: str) -> TradingSession | None:
        """The newest trading session started by this Prefect flow run, or None."""
        query = select(TradingSession).where(TradingSession.flow_run_id == flow_run_id)
        with self._transaction() as session:
            return session.exec(query.order_by(col(TradingSession.started_at).desc())).first()


def _session_row(session: Session, session_id: str) -> TradingSession:
    row = session.get(TradingSession, session_id)
    if row is None:
        raise LedgerError(f"no trading session {session_id} in the ledger")
    return row
