"""perps-bot rejections [--last-hour | --hours N]: the orders the exchange (or the broker's own checks) refused in the
window, counted by reason, from the ledger (the perpetuals runbook's analyze_rejections --last-hour).

The window ends at the account's clock: the wall clock for a live account or live prices, the paper exchange's
market clock for a replayed paper account (its ledger is stamped in replay time).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from datetime import datetime, timedelta

from rich.table import Table

from deployments.cli.output import say, wide
from trader.errors import ConfigError
from trader.settings import Settings

REFUSED = ("failed", "rejected")
_ORDER_PREFIX = re.compile(r"^[^\[\]]*\[[^\]]*\]:\s*")  # "... [client_order_id]: " before the exchange's words


def rejections_command(settings: Settings, args: argparse.Namespace) -> int:
    """Count the window's refused orders by reason; exit 0 (none is not an error)."""
    from trader.runtime import open_ledger

    hours = 1.0 if args.last_hour or args.hours is None else args.hours
    if not hours > 0:  # (NaN too)
        raise ConfigError(f"--hours: must be above 0 (got {hours:g}); e.g. --hours 24, or --last-hour")
    if args.action is not None:
        raise ConfigError(f"rejections: takes no action (got {args.action!r}); use --last-hour or --hours N")
    end = account_clock(settings)
    start = end - timedelta(hours=hours)
    with open_ledger(settings) as ledger:
        orders = ledger.orders_created_between(start, end + timedelta(microseconds=1))
    refused = [o for o in orders if o.status in REFUSED]
    reasons = Counter(reason_of(o.reject_reason) for o in refused)
    say(
        f"{len(refused)} of {len(orders)} orders refused between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC "
        f"(account {settings.account})"
    )
    if reasons:
        table = Table(title="rejections by reason")
        for column in ("count", "reason", "symbols", "last"):
            table.add_column(column)
        for reason, count in reasons.most_common():
            mine = [o for o in refused if reason_of(o.reject_reason) == reason]
            symbols = ", ".join(sorted({o.symbol for o in mine}))
            table.add_row(str(count), reason, symbols, f"{max(o.created_at for o in mine):%H:%M:%S}")
        wide().print(table)
    return 0


def reason_of(text: str | None) -> str:
    """The reason without the order it was about ("Coinbase rejected sell 50 BTC-USD [r0]: INSUFFICIENT_FUND: ..."
    counts as "INSUFFICIENT_FUND: ..."), so one cause is one row."""
    return _ORDER_PREFIX.sub("", (text or "").strip(), count=1) or "no reason given"


def account_clock(settings: Settings) -> datetime:
    """Now, as the account's ledger stamps it: a replayed paper exchange's saved market clock, else the wall clock."""
    from datetime import UTC

    if settings.broker_kind == "simulated" and settings.market_data == "replay":
        from trader.runtime import build_broker

        return build_broker(settings, read_only=True).now()
    return datetime.now(UTC)
