"""The checkpoint flow's task: one checkpoint of the ledger's positions and open orders and the broker's balances."""

from __future__ import annotations

from prefect import task

from tasks.policies import NETWORK_READ
from trader.runtime import build_broker, open_ledger
from trader.settings import Settings
from trader.state.checkpoints import CheckpointInfo, checkpoint_store_from_settings, snapshot_from_ledger


@task(name="create checkpoint", **NETWORK_READ.options())
def create_checkpoint(settings: Settings, reason: str, with_broker: bool) -> CheckpointInfo:
    """Snapshot, store (warm and cold tiers) and return what was stored; a retry takes a fresh snapshot."""
    broker = build_broker(settings, read_only=True) if with_broker else None
    store = checkpoint_store_from_settings(settings)
    try:
        with open_ledger(settings, migrate=False) as ledger:
            snapshot = snapshot_from_ledger(ledger, broker)
        return store.create(snapshot, reason=reason)
    finally:
        store.dispose()
