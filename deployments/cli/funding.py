"""perps-bot funding [--days 7]: the funding history of the account's futures from the ledger (the perpetuals
runbook's get_funding_rates.py and funding_history.py --days 7): per product the rates recorded, the funding paid,
received and settled, and the totals; then the window's payments, newest last."""

from __future__ import annotations

import argparse
from datetime import timedelta

from rich.table import Table

from deployments.cli.output import say, wide
from deployments.cli.rejections import account_clock
from trader.errors import ConfigError
from trader.settings import Settings

SHOWN_PAYMENTS = 48  # the newest accruals and settlements listed under the totals


def funding_command(settings: Settings, args: argparse.Namespace) -> int:
    from trader.funding import funding_summary
    from trader.runtime import open_ledger

    days = 7.0 if args.days is None else args.days
    if not days > 0:
        raise ConfigError(f"--days: must be above 0 (got {days:g}); e.g. --days 7")
    if args.action is not None:
        raise ConfigError(f"funding: takes no action (got {args.action!r}); use --days N")
    end = account_clock(settings)
    start = end - timedelta(days=days)
    with open_ledger(settings) as ledger:
        rows = funding_summary(ledger, start, end)
        payments = [p for p in ledger.funding_payments_since(start) if p.at <= end]
    say(f"funding {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC (account {settings.account})")
    if not rows:
        say("no funding rates or payments recorded in the window (futures need COINBASE_ENABLE_DERIVATIVES=1)")
        return 0
    table = Table(title="funding per product (USD; paid < 0, received > 0)")
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "symbol" else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    wide().print(table)
    if payments:
        listed = Table(title=f"payments (the newest {min(len(payments), SHOWN_PAYMENTS)} of {len(payments)})")
        for column in ("at", "symbol", "kind", "rate", "contracts", "mark", "amount"):
            listed.add_column(column, justify="left" if column in ("at", "symbol", "kind") else "right")
        for p in payments[-SHOWN_PAYMENTS:]:
            kind = "settled" if p.settled else "estimate" if p.payment_id.startswith("estimate-") else "accrued"
            listed.add_row(
                f"{p.at:%Y-%m-%d %H:%M}",
                p.symbol,
                kind,
                "" if p.rate is None else str(p.rate),
                "" if p.contracts is None else str(p.contracts),
                "" if p.mark_price is None else str(p.mark_price),
                str(p.amount),
            )
        wide().print(listed)
    return 0
