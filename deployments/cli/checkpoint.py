"""perps-bot checkpoint list | create [--reason R] [--no-broker] | restore ID [--dry-run].

Restore verifies the checkpoint (sha256), then writes its positions into the ledger where they differ
(trader/reconcile/positions.py computes the diff); open orders and balances are printed, not written.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from deployments.cli.output import out
from trader.errors import ConfigError
from trader.settings import Settings

if TYPE_CHECKING:
    from trader.state.checkpoints import CheckpointStore

CHECKPOINT_ACTIONS = ("list", "create", "restore")


def checkpoint_command(settings: Settings, args: argparse.Namespace) -> int:
    """perps-bot checkpoint list | create [--reason R] [--no-broker] | restore ID [--dry-run]."""
    from trader.logs import configure_logging
    from trader.state.checkpoints import checkpoint_store_from_settings

    action, checkpoint_id = args.action, args.checkpoint_id
    if action not in CHECKPOINT_ACTIONS:
        got = f" (got {action!r})" if action else ""
        raise ConfigError(f"checkpoint: expected one of {', '.join(CHECKPOINT_ACTIONS)}{got}")
    if action == "restore" and not checkpoint_id:
        raise ConfigError("checkpoint restore: give the checkpoint ID (perps-bot checkpoint list shows them)")
    if action != "restore" and checkpoint_id:
        raise ConfigError(f"checkpoint {action}: takes no ID (got {checkpoint_id!r})")
    configure_logging(settings.log_file, stderr=False)  # "Restored from checkpoint" lines go to perps_bot.log
    store = checkpoint_store_from_settings(settings)
    try:
        if action == "list":
            return checkpoint_list(store)
        if action == "create":
            return checkpoint_create(settings, store, args)
        return checkpoint_restore(settings, store, checkpoint_id, dry_run=args.dry_run)
    finally:
        store.dispose()


def checkpoint_list(store: CheckpointStore) -> int:
    checkpoints = store.list()
    if not checkpoints:
        out.print("no checkpoints yet: perps-bot checkpoint create")
        return 0
    table = Table(title="Checkpoints (newest first)")
    for column in ("id", "created (UTC)", "reason", "size", "compressed", "sha256"):
        table.add_column(column, no_wrap=True, justify="right" if column == "size" else "left")
    for c in checkpoints:
        table.add_row(
            c.id,
            f"{c.created_at:%Y-%m-%d %H:%M:%S}",
            c.reason,
            str(c.size_bytes),
            "yes" if c.compressed else "no",
            c.sha256[:12],
        )
    # Piped output (not a terminal) gets rich's 80 columns, which would cut the ids; a table line is ~100 wide.
    console = out if out.is_terminal else Console(highlight=False, width=160)
    console.print(table)
    return 0


def checkpoint_create(settings: Settings, store: CheckpointStore, args: argparse.Namespace) -> int:
    """Snapshot of the ledger (positions, open orders) plus the broker's balances unless --no-broker."""
    from trader.ledger import Ledger
    from trader.state.checkpoints import snapshot_from_ledger

    broker = None
    if not args.no_broker:
        from trader.runtime import build_broker

        broker = build_broker(settings)
    with Ledger(settings.database_url, account=settings.account) as ledger:
        snapshot = snapshot_from_ledger(ledger, broker)
    info = store.create(snapshot, reason=args.reason)
    out.print(
        f"created checkpoint {info.id}: {len(snapshot['positions'])} position(s), "
        f"{len(snapshot['open_orders'])} open order(s), {len(snapshot['balances'])} balance(s); "
        f"{info.size_bytes} bytes{' gzip' if info.compressed else ''}, sha256 {info.sha256[:12]}; "
        f"{info.duration_ms:.1f} ms",
        soft_wrap=True,
    )
    return 0


def checkpoint_restore(settings: Settings, store: CheckpointStore, checkpoint_id: str, *, dry_run: bool) -> int:
    """Verify the checkpoint, then write its positions into the ledger where they differ (--dry-run: only show).

    Open orders and balances are printed, not written: the exchange holds them, and reconciliation brings the
    ledger's orders back in line with it."""
    from trader.ledger import Ledger
    from trader.reconcile.positions import checkpoint_positions, ledger_positions, position_changes, write_positions
    from trader.state.checkpoints import CheckpointNotFound

    try:
        restored = store.restore_checkpoint(checkpoint_id)
    except CheckpointNotFound as error:
        raise ConfigError(str(error)) from None
    info, snapshot = restored.info, restored.snapshot
    for note in restored.notes:
        out.print(f"[yellow]{note}[/]", soft_wrap=True)
    out.print(
        f"restored checkpoint {info.id} (created {info.created_at:%Y-%m-%d %H:%M:%S} UTC, reason {info.reason}) "
        f"from the {restored.source} copy: sha256 verified; {len(snapshot.get('positions', {}))} position(s), "
        f"{len(snapshot.get('open_orders', []))} open order(s), {len(snapshot.get('balances', {}))} balance(s); "
        f"{restored.duration_ms:.1f} ms",
        soft_wrap=True,
    )
    wanted = checkpoint_positions(snapshot)
    with Ledger(settings.database_url, account=settings.account) as ledger:
        for session in ledger.list_sessions():
            if session.status == "running" and not dry_run:
                out.print(
                    f"[yellow]warning: bot session {session.id} ({session.profile}) is marked running; a live bot "
                    "reconciles positions with the exchange and may overwrite the restored ones[/]",
                    soft_wrap=True,
                )
        changes = position_changes(wanted, ledger_positions(ledger))
        verb = "would set" if dry_run else "set"
        for change in changes:
            (before_qty, before_price), (quantity, price) = change.before, change.after
            out.print(f"  {verb} position {change.symbol}: {before_qty} @ {before_price} -> {quantity} @ {price}")
        if not dry_run:
            write_positions(ledger, changes, datetime.now(UTC))
    if not changes:
        out.print("ledger positions already match the checkpoint: nothing written")
    elif dry_run:
        out.print(f"dry run: {len(changes)} position(s) differ; nothing written")
    else:
        out.print(f"wrote {len(changes)} position(s) to the ledger")
    for order in snapshot.get("open_orders", []):
        out.print(
            f"  open order in checkpoint (not restored; reconcile with the exchange): {order.get('client_order_id')} "
            f"{order.get('side')} {order.get('quantity')} {order.get('symbol')} {order.get('status')}",
            soft_wrap=True,
        )
    return 0
