"""Fixtures for the reconciliation audit: a paper exchange that records every order it is asked to create, edit or
cancel, and a ledger on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from trader.brokers.simulated import SimulatedExchange
from trader.domain import Order, OrderRequest
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.market.source import MarketDataSource


class RecordingExchange(SimulatedExchange):
    """The paper exchange, noting every create, edit and cancel it receives (the audit must send none)."""

    def __init__(self, market: MarketDataSource, **options: Any) -> None:
        super().__init__(market, **options)
        self.mutations: list[str] = []

    def place_order(self, request: OrderRequest) -> Order:
        self.mutations.append(f"create {request.client_order_id}")
        return super().place_order(request)

    def apply_edit(self, order_id: str, preview_id: str) -> Order:
        self.mutations.append(f"edit {order_id}")
        return super().apply_edit(order_id, preview_id)

    def cancel_orders(self, order_ids: list[str]) -> dict[str, bool]:
        self.mutations.append(f"cancel {', '.join(order_ids)}")
        return super().cancel_orders(order_ids)


@pytest.fixture
def exchange() -> RecordingExchange:
    return RecordingExchange(ReplayMarketData())


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """A migrated ledger, once on a SQLite file and once on a fresh PostgreSQL database."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url")
    built = Ledger(url)
    yield built
    built.dispose()


@pytest.fixture
def prefect_harness(prefect_server: dict[str, str]) -> None:
    """The session's Prefect server (tests/conftest.py), so the reconcile flow runs in-process and keeps artifacts;
    a test reads the artifacts of its own flow run."""
