"""perps-bot accounts [list|check]: the declared accounts (ACCOUNTS_FILE), one row each, never a key's value.

list reads and validates the file and each account's settings; check also asks each account's broker whether it
lists the account's symbols (a coinbase account: its own key, over the network). Any mistake: one line naming the
account and the field, exit 2, nothing written.
"""

from __future__ import annotations

from rich.table import Table

from deployments.cli.output import say, wide
from prefect_adapter.secrets import secret_block_value
from trader.accounts import check_symbols, declared, settings_for
from trader.errors import ConfigError
from trader.runtime import build_broker
from trader.settings import Settings

ACTIONS = ("list", "check")


def accounts_command(settings: Settings, action: str | None, profile: str | None) -> int:
    action = action or "list"
    if action not in ACTIONS:
        raise ConfigError(f"accounts: unknown action {action!r}; use list or check")
    specs = declared(settings)
    if specs is None:
        say(
            f"no {settings.accounts_file}: one account, {settings.account!r}, from the environment "
            f"({settings.broker_kind}, {', '.join(settings.symbols)}, profile {settings.profile})"
        )
        return 0
    table = Table(title=f"accounts ({settings.accounts_file})")
    for column in ("account", "broker", "profile", "symbols", "key from", "risk"):
        table.add_column(column)
    for spec in specs:
        account = settings_for(spec, profile=profile, secret=secret_block_value)
        if action == "check":
            broker = build_broker(account, persist=False, read_only=True)
            check_symbols(spec, {product.symbol for product in broker.list_products()})
        risk = f"max position {account.risk_max_position_usd} USD, daily loss {account.risk_daily_loss_limit_pct}%"
        source = spec.credentials.describe() if spec.credentials is not None else "-"
        table.add_row(spec.name, spec.broker, account.profile, ", ".join(spec.symbols), source, risk)
    wide().print(table)
    if action == "check":
        say(f"{len(specs)} account(s) checked: settings valid, every symbol listed by its broker")
    return 0
