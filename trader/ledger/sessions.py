"""The Ledger's trading sessions: started, alive (heartbeat), ended; each one of the Ledger's account."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import get_args

from sqlalchemy import bindparam, update
from sqlmodel import Session, col, select

from trader.ledger.base import LedgerBase, LedgerError, now, require
from trader.ledger.models import SessionMode, TradingSession

ENDED_STATUSES = ("stopped", "crashed", "recovered", "stood_down")

# The heartbeat runs every cycle: one prebuilt UPDATE by id within the account, no row loaded.
_SESSIONS = TradingSession.__table__  # type: ignore[attr-defined]
_HEARTBEAT = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("key"), _SESSIONS.c.account == bindparam("of_account"))
    .values(
        cycles=bindparam("cycles"),
        last_heartbeat_at=bindparam("last_heartbeat_at"),
        last_market_time=bindparam("last_market_time"),
    )
)


class SessionsMixin(LedgerBase):
    def start_session(
        self, profile: str, broker: str, mode: str, flow_run_id: str | None = None, *, at: datetime | None = None
    ) -> str:
        """Open a trading session and return its id."""
        require("session mode", mode, get_args(SessionMode))
        row = TradingSession(
            account=self.account,
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
        beat = {
            "key": session_id,
            "of_account": self.account,
            "cycles": cycles,
            "last_heartbeat_at": at or now(),
            "last_market_time": market_time,
        }
        with self._transaction() as session:
            if session.connection().execute(_HEARTBEAT, beat).rowcount == 0:
                raise LedgerError(f"no trading session {session_id} of account {self.account} in the ledger")

    def end_session(self, session_id: str, status: str, note: str | None = None, *, at: datetime | None = None) -> None:
        """Close the session as stopped, crashed or recovered."""
        require("session status", status, ENDED_STATUSES)
        with self._transaction() as session:
            row = _session_row(session, self.account, session_id)
            row.status = status
            row.ended_at = at or now()
            row.note = note

    def get_session(self, session_id: str) -> TradingSession:
        """The trading session with this id."""
        with self._transaction() as session:
            return _session_row(session, self.account, session_id)

    def list_sessions(self) -> list[TradingSession]:
        """Every trading session, oldest first."""
        query = select(TradingSession).where(TradingSession.account == self.account)
        with self._transaction() as session:
            return list(session.exec(query.order_by(col(TradingSession.started_at))).all())

    def find_session_by_flow_run(self, flow_run_id: str) -> TradingSession | None:
        """The newest trading session started by this Prefect flow run, or None."""
        query = select(TradingSession).where(
            TradingSession.account == self.account, TradingSession.flow_run_id == flow_run_id
        )
        with self._transaction() as session:
            return session.exec(query.order_by(col(TradingSession.started_at).desc())).first()


def _session_row(session: Session, account: str, session_id: str) -> TradingSession:
    row = session.get(TradingSession, session_id)
    if row is None or row.account != account:
        raise LedgerError(f"no trading session {session_id} of account {account} in the ledger")
    return row
