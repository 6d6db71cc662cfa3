"""The trading ledger on SQLite or PostgreSQL, with its Alembic migrations shipped in the package."""

from __future__ import annotations

from trader.ledger.ledger import DuplicateClientOrderId, Ledger, LedgerError
from trader.ledger.models import FillRecord, Incident, OrderRecord, TradingSession

__all__ = ["DuplicateClientOrderId", "FillRecord", "Incident", "Ledger", "LedgerError", "OrderRecord", "TradingSession"]
