"""The ledger's schema brought to head once per flow run, before its tasks open theirs (with migrate=False)."""

from __future__ import annotations

from prefect import task

from tasks.policies import LOCAL_CHECK
from trader.runtime import open_ledger
from trader.settings import Settings


@task(name="migrate-ledger", tags=["ledger"], **LOCAL_CHECK.options())
def migrate_ledger(settings: Settings) -> None:
    """Run the ledger's migrations in the flow, once: tasks run in threads and must not migrate concurrently."""
    with open_ledger(settings, migrate=True):
        pass
