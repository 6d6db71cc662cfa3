"""The ledger on each backend, for the ledger's own tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trader.ledger import Ledger
from trader.ledger.models import LedgerModel


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """A migrated, empty ledger on each backend."""
    url = str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    ledger = Ledger(url)
    shared = request.param == "postgresql"  # pg_url lives for the whole test session: start and leave it empty
    if shared:
        empty(ledger)
    yield ledger
    if shared:
        empty(ledger)
    ledger.dispose()


def empty(ledger: Ledger) -> None:
    with ledger.engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {', '.join(LedgerModel.metadata.tables)} RESTART IDENTITY CASCADE")
