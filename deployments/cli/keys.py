"""perps-bot keys status | audit [--hours 24]: the perpetuals runbook's key-compromise procedure, first steps.

- status: the key's name (its last four characters only), how long ago its key file was written, its permissions
  and portfolio, and the clock against the exchange's. Never the secret.
- rotate --to backup|primary: the account's bots switch to the other key (COINBASE_BACKUP_KEY_FILE, or
  COINBASE_BACKUP_API_KEY/_SECRET; without either, the Prefect Secret blocks coinbase-backup-api-key and
  coinbase-backup-api-secret) at their next cycle, without a restart: the key is proven first (a permissions read
  with it), then STATE_DIR/ACTIVE_KEY names it and a SEV-1 incident records the switch. A key from the blocks is
  written for the bots to STATE_DIR/backup_key.json (mode 0600) before ACTIVE_KEY names it, and removed when they
  leave it.
- audit: every order on the exchange in the window that this platform did not place (its client_order_id not in
  the account's ledger), with its fills, listed as unauthorized; any finding opens a SEV-1 security incident
  (fingerprint security:unauthorized-orders) and exits 1; a clean window resolves it and exits 0. The same
  function as the security-audit deployment's (trader/security/audit.py).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.table import Table

from deployments.cli.output import say, wide
from trader.errors import ConfigError
from trader.settings import Settings

if TYPE_CHECKING:
    from trader.coinbase.http import KeySlot

KEYS_ACTIONS = ("status", "audit", "rotate")


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.action not in KEYS_ACTIONS:
        got = f" (got {args.action!r})" if args.action else ""
        raise ConfigError(f"keys: expected one of {', '.join(KEYS_ACTIONS)}{got}; e.g. perps-bot keys audit --hours 24")
    if settings.broker_kind != "coinbase":
        raise ConfigError("keys: needs the Coinbase key (COINBASE_KEY_FILE or COINBASE_API_KEY/COINBASE_API_SECRET)")
    if args.action == "status":
        return key_status(settings)
    if args.action == "rotate":
        return rotate(settings, args.to)
    hours = 24.0 if args.hours is None else args.hours
    if not hours > 0:  # (NaN too)
        raise ConfigError(f"--hours: must be above 0 (got {hours:g}); e.g. --hours 24")
    return audit(settings, hours)


def key_status(settings: Settings) -> int:
    from trader.brokers.coinbase import CoinbaseBroker

    broker = CoinbaseBroker.from_settings(settings)  # on the account's active key (STATE_DIR/ACTIVE_KEY)
    slot = broker.key_slot
    permissions = broker.key_permissions()
    skew = (datetime.now(UTC) - broker.server_time()).total_seconds()
    key_file = settings.coinbase_key_file if slot == "primary" else settings.coinbase_backup_key_file
    age = "set in the environment"
    if key_file is not None:
        days = (time.time() - key_file.stat().st_mtime) / 86400
        age = f"key file written {days:.0f} days ago"
    elif slot == "backup" and not settings.coinbase_backup_api_key:
        age = "from the Prefect Secret blocks"
    say(f"{slot} key {broker.key_hint} ({age}), the one the account's bots use")
    say(
        f"permissions: can_view={permissions.can_view} can_trade={permissions.can_trade} "
        f"can_transfer={permissions.can_transfer} portfolio_type={permissions.portfolio_type}"
    )
    say(f"clock: local {abs(skew):.2f} s {'ahead of' if skew > 0 else 'behind'} the exchange's")
    return 0


def audit(settings: Settings, hours: float) -> int:
    from trader.alerts.incidents import IncidentDesk
    from trader.brokers.coinbase import CoinbaseBroker
    from trader.runtime import open_ledger
    from trader.security.audit import COLUMNS, audit_key_activity, record_audit_incident

    broker = CoinbaseBroker.from_settings(settings)
    with open_ledger(settings) as ledger:
        found = audit_key_activity(broker, ledger, hours, account=settings.account)
        say(found.summary())
        record_audit_incident(IncidentDesk.on(ledger, settings), found)
    if not found.unauthorized:
        return 0
    table = Table(title="unauthorized orders")
    for column in COLUMNS:
        table.add_column(column)
    for row in found.rows():
        table.add_row(*row.values())
    wide().print(table)
    return 1


def rotate(settings: Settings, to: str | None) -> int:
    from prefect_adapter.secrets import (
        BACKUP_API_KEY_BLOCK,
        BACKUP_API_SECRET_BLOCK,
        backup_key_from_secret_blocks,
        deliver_block_events,
    )
    from trader.alerts.incidents import IncidentDesk
    from trader.alerts.severity import IncidentKind
    from trader.brokers.coinbase import CoinbaseBroker
    from trader.coinbase.http import (
        ACTIVE_KEY_FILE,
        KEY_SLOTS,
        active_key_slot,
        backup_key_in_environment,
        drop_backup_key_copy,
        keep_backup_key_copy,
        load_credentials,
    )
    from trader.errors import TraderError
    from trader.fsio import atomic_write
    from trader.runtime import open_ledger

    if to not in KEY_SLOTS:
        got = f" (got {to!r})" if to else ""
        raise ConfigError(f"--to: expected one of {', '.join(KEY_SLOTS)}{got}; e.g. perps-bot keys rotate --to backup")
    slot: KeySlot = "backup" if to == "backup" else "primary"
    # The environment's backup key wins; only without one are the Secret blocks read (the Prefect API's).
    from_blocks = None
    if slot == "backup" and not backup_key_in_environment(settings):
        try:
            from_blocks = backup_key_from_secret_blocks()
        finally:
            deliver_block_events()
        if from_blocks is None:
            raise ConfigError(
                "keys rotate: no backup key is configured; set COINBASE_BACKUP_KEY_FILE (or COINBASE_BACKUP_API_KEY "
                f"and COINBASE_BACKUP_API_SECRET), or create the Prefect Secret blocks {BACKUP_API_KEY_BLOCK} and "
                f"{BACKUP_API_SECRET_BLOCK}"
            )
    elif load_credentials(settings, slot) is None:
        raise ConfigError(
            "keys rotate: no primary key is configured; set COINBASE_KEY_FILE (or COINBASE_API_KEY/_SECRET)"
        )
    current = active_key_slot(settings)
    if current == slot:
        say(f"already on the {slot} key: nothing changed")
        return 0
    broker = CoinbaseBroker.from_settings(settings)
    broker.use_key(slot, from_blocks)
    try:
        permissions = broker.key_permissions()
    except TraderError as error:
        say(f"not switched: the {slot} key does not work ({error})")
        return 1
    source = ""
    if from_blocks is not None:
        # Before ACTIVE_KEY names the backup: a bot that reads "backup" must find the key beside it.
        copy = keep_backup_key_copy(settings, from_blocks)
        source = f", from the Prefect Secret blocks {BACKUP_API_KEY_BLOCK} and {BACKUP_API_SECRET_BLOCK}"
        say(f"backup key read from the Prefect Secret blocks; kept for the bots in {copy} (mode 0600) while in use")
    atomic_write(settings.state_dir / ACTIVE_KEY_FILE, f"{slot}\n")
    if from_blocks is None:
        drop_backup_key_copy(settings)  # the blocks' copy lives only while the bots use it
    hint = broker.key_hint
    with open_ledger(settings) as ledger:
        IncidentDesk.on(ledger, settings).raise_incident(
            IncidentKind.KEY_ROTATION,
            f"API key switched from {current} to {slot}",
            f"the account's bots use the {slot} key ({hint}{source}, can_trade={permissions.can_trade}) from their "
            f"next cycle; revoke the {current} key in the Coinbase Developer Platform and run perps-bot keys audit "
            "--hours 24",
            fingerprint="security:key-rotation",
        )
    say(f"switched to the {slot} key ({hint}): running bots use it from their next cycle; revoke the {current} key")
    return 0
