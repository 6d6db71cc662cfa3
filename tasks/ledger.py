"""The ledger's schema brought to head once per flow run, before its tasks open theirs (with migrate=False)."""

from __future__ import annotations

from trader.runtime import open_ledger
from trader.settings import Settings


def migrate_ledger(settings: Settings) -> None:
    """Run the ledger's migrations in the flow, once: tasks run in threads and must not migrate concurrently."""
    with open_ledger(settings, migrate=True):
        pass
