"""perps-bot keys status | audit [--hours 24]: the perpetuals runbook's key-compromise procedure, first steps.

- status: the key's name (its last four characters only), how long ago its key file was written, its permissions
  and portfolio, and the clock against the exchange's. Never the secret.
- rotate --to backup|primary: the account's bots switch to the other key (COINBASE_BACKUP_KEY_FILE, or
  COINBASE_BACKUP_API_KEY/_SECRET) at their next cycle, without a restart: the key is proven first (a permissions
  read with it), then STATE_DIR/ACTIVE_KEY names it and a SEV-1 incident records the switch.
- audit: every order on the exchange in the window that this platform did not place (its client_order_id not in
  the account's ledger), with its fills, listed as unauthorized; any finding opens a SEV-1 security incident
  (fingerprint security:unauthorized-orders) and exits 1; a clean window resolves it and exits 0.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from rich.table import Table

from deployments.cli.output import say, wide
from trader.errors import ConfigError
from trader.settings import Settings

KEYS_ACTIONS = ("status", "audit", "rotate")
AUDIT_FINGERPRINT = "security:unauthorized-orders"


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
    if hours <= 0:
        raise ConfigError(f"--hours: must be above 0 (got {hours:g}); e.g. --hours 24")
    return audit(settings, hours)


def key_status(settings: Settings) -> int:
    from trader.brokers.coinbase import CoinbaseBroker
    from trader.coinbase.http import load_credentials

    credentials = load_credentials(settings)
    assert credentials is not None  # broker_kind coinbase means a key is configured
    broker = CoinbaseBroker.from_settings(settings)
    permissions = broker.key_permissions()
    skew = (datetime.now(UTC) - broker.server_time()).total_seconds()
    age = "set in the environment"
    if settings.coinbase_key_file is not None:
        days = (time.time() - settings.coinbase_key_file.stat().st_mtime) / 86400
        age = f"key file written {days:.0f} days ago"
    say(f"key …{credentials.name[-4:]} ({age})")
    say(
        f"permissions: can_view={permissions.can_view} can_trade={permissions.can_trade} "
        f"can_transfer={permissions.can_transfer} portfolio_type={permissions.portfolio_type}"
    )
    say(f"clock: local {abs(skew):.2f} s {'ahead of' if skew > 0 else 'behind'} the exchange's")
    return 0


def audit(settings: Settings, hours: float) -> int:
    from trader.alerts.incidents import IncidentDesk
    from trader.alerts.severity import IncidentKind
    from trader.brokers.coinbase import CoinbaseBroker
    from trader.runtime import open_ledger

    broker = CoinbaseBroker.from_settings(settings)
    end = datetime.now(UTC)
    start = end - timedelta(hours=hours)
    orders = broker.orders_between(start, end)
    fills = broker.list_fills(since=start)
    with open_ledger(settings) as ledger:
        ours = ledger.orders_by_client_id(o.client_order_id for o in orders if o.client_order_id)
        foreign = [o for o in orders if o.client_order_id not in ours]
        foreign_ids = {o.order_id for o in foreign}
        foreign_fills = [f for f in fills if f.order_id in foreign_ids]
        say(
            f"{len(orders)} orders on the exchange between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC; "
            f"{len(foreign)} not placed by this platform (account {settings.account})"
        )
        desk = IncidentDesk.on(ledger, settings)
        if not foreign:
            desk.resolve(AUDIT_FINGERPRINT)
            return 0
        table = Table(title="unauthorized orders")
        for column in ("created", "order_id", "client_order_id", "symbol", "side", "quantity", "status", "fills"):
            table.add_column(column)
        for order in foreign:
            count = sum(1 for f in foreign_fills if f.order_id == order.order_id)
            table.add_row(
                f"{order.created_at:%Y-%m-%d %H:%M:%S}",
                order.order_id,
                order.client_order_id or "-",
                order.symbol,
                str(order.side),
                str(order.quantity),
                str(order.status),
                str(count),
            )
        wide().print(table)
        evidence = "; ".join(f"{o.symbol} {o.side} {o.quantity} ({o.order_id})" for o in foreign[:10])
        desk.raise_incident(
            IncidentKind.UNAUTHORIZED_ACTIVITY,
            f"{len(foreign)} orders on the exchange were not placed by this platform",
            f"in the last {hours:g} h: {evidence}; {len(foreign_fills)} fills. Rotate the key "
            "(perps-bot keys rotate --to backup) and review the account.",
            fingerprint=AUDIT_FINGERPRINT,
        )
        return 1


def rotate(settings: Settings, to: str | None) -> int:
    from trader.alerts.incidents import IncidentDesk
    from trader.alerts.severity import IncidentKind
    from trader.brokers.coinbase import CoinbaseBroker
    from trader.coinbase.http import ACTIVE_KEY_FILE, KEY_SLOTS, active_key_slot, load_credentials
    from trader.errors import TraderError
    from trader.fsio import atomic_write
    from trader.runtime import open_ledger

    if to not in KEY_SLOTS:
        got = f" (got {to!r})" if to else ""
        raise ConfigError(f"--to: expected one of {', '.join(KEY_SLOTS)}{got}; e.g. perps-bot keys rotate --to backup")
    if load_credentials(settings, to) is None:  # type: ignore[arg-type]
        raise ConfigError(
            f"keys rotate: no {to} key is configured; set COINBASE_BACKUP_KEY_FILE (or COINBASE_BACKUP_API_KEY and "
            "COINBASE_BACKUP_API_SECRET)"
            if to == "backup"
            else "keys rotate: no primary key is configured; set COINBASE_KEY_FILE (or COINBASE_API_KEY/_SECRET)"
        )
    current = active_key_slot(settings)
    if current == to:
        say(f"already on the {to} key: nothing changed")
        return 0
    broker = CoinbaseBroker.from_settings(settings)
    broker.use_key(to)  # type: ignore[arg-type]
    try:
        permissions = broker.key_permissions()
    except TraderError as error:
        say(f"not switched: the {to} key does not work ({error})")
        return 1
    atomic_write(settings.state_dir / ACTIVE_KEY_FILE, f"{to}\n")
    hint = broker.key_hint
    with open_ledger(settings) as ledger:
        IncidentDesk.on(ledger, settings).raise_incident(
            IncidentKind.KEY_ROTATION,
            f"API key switched from {current} to {to}",
            f"the account's bots use the {to} key ({hint}, can_trade={permissions.can_trade}) from their next cycle; "
            f"revoke the {current} key in the Coinbase Developer Platform and run perps-bot keys audit --hours 24",
            fingerprint="security:key-rotation",
        )
    say(f"switched to the {to} key ({hint}): running bots use it from their next cycle; revoke the {current} key")
    return 0
