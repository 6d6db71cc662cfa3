"""perps-bot keys status | audit [--hours 24]: the perpetuals runbook's key-compromise procedure, first steps.

- status: the key's name (its last four characters only), how long ago its key file was written, its permissions
  and portfolio, and the clock against the exchange's. Never the secret.
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

KEYS_ACTIONS = ("status", "audit")
AUDIT_FINGERPRINT = "security:unauthorized-orders"


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.action not in KEYS_ACTIONS:
        got = f" (got {args.action!r})" if args.action else ""
        raise ConfigError(f"keys: expected one of {', '.join(KEYS_ACTIONS)}{got}; e.g. perps-bot keys audit --hours 24")
    if settings.broker_kind != "coinbase":
        raise ConfigError("keys: needs the Coinbase key (COINBASE_KEY_FILE or COINBASE_API_KEY/COINBASE_API_SECRET)")
    if args.action == "status":
        return key_status(settings)
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
