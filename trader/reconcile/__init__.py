"""Reconciliation of the ledger with the broker's truth."""

from trader.reconcile.startup import StartupReconciliation, reconcile_on_start

__all__ = ["StartupReconciliation", "reconcile_on_start"]
