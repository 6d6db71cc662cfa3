"""perps-bot accounts [list|check|deployments]: the declared accounts (ACCOUNTS_FILE), one row each, no key's value.

list reads and validates the file and each account's settings; check also asks each account's broker whether it
lists the account's symbols (a coinbase account: its own key, over the network); deployments writes the prefect file
for workers, trading-bot/<account> per account (`prefect deploy --all --prefect-file prefect.accounts.yaml`). Any
mistake: one line naming the account and the field, exit 2, nothing written.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from deployments.cli.output import say, wide
from prefect_adapter.secrets import secret_block_value
from trader.accounts import ALL_ACCOUNTS, check_symbols, declared, selected_accounts
from trader.errors import ConfigError
from trader.runtime import build_broker
from trader.settings import Settings

ACTIONS = ("list", "check", "deployments")


def accounts_command(
    settings: Settings, action: str | None, profile: str | None, prefect_file: Path | None = None
) -> int:
    action = action or "list"
    if action not in ACTIONS:
        raise ConfigError(f"accounts: unknown action {action!r}; use list, check or deployments")
    if action == "deployments":
        return deployments_command(settings, prefect_file)
    specs = declared(settings)
    if specs is None:
        say(
            f"no {settings.accounts_file}: one account, {settings.account!r}, from the environment "
            f"({settings.broker_kind}, {', '.join(settings.symbols)}, profile {settings.profile})"
        )
        return 0
    table = Table(title=f"accounts ({settings.accounts_file})")
    for column in ("account", "broker", "profile", "symbols", "key from", "risk", "state", "metrics"):
        table.add_column(column)
    for spec, account in zip(
        specs, selected_accounts(settings, ALL_ACCOUNTS, profile=profile, secret=secret_block_value), strict=True
    ):
        if action == "check":
            broker = build_broker(account, persist=False, read_only=True)
            check_symbols(spec, {product.symbol for product in broker.list_products()})
        risk = f"max position {account.risk_max_position_usd} USD, daily loss {account.risk_daily_loss_limit_pct}%"
        source = spec.credentials.describe() if spec.credentials is not None else "-"
        port = f":{account.metrics_port}" if account.metrics_port else "free port"
        symbols = ", ".join(spec.symbols)
        table.add_row(spec.name, spec.broker, account.profile, symbols, source, risk, str(account.state_dir), port)
    wide().print(table)
    if action == "check":
        say(f"{len(specs)} account(s) checked: settings valid, every symbol listed by its broker")
    return 0


def deployments_command(settings: Settings, prefect_file: Path | None) -> int:
    """Write prefect.yaml with trading-bot expanded per declared account (serve_all.deployment_entries, the list
    `perps-bot up` serves) for workers: `prefect deploy --all --prefect-file` it."""
    from deployments.serve_all import ACCOUNTS_PREFECT_YAML, write_prefect_file

    path = prefect_file or ACCOUNTS_PREFECT_YAML
    entries = write_prefect_file(path, settings)
    table = Table(title=f"deployments ({path})")
    for column in ("deployment", "parameters", "schedule", "tags"):
        table.add_column(column)
    for entry in entries:
        flow = entry["entrypoint"].rpartition(":")[2]
        schedules = ", ".join(s["cron"] for s in entry.get("schedules") or []) or "-"
        parameters = ", ".join(f"{k}={v}" for k, v in (entry.get("parameters") or {}).items())
        table.add_row(f"{flow}/{entry['name']}", parameters, schedules, ", ".join(entry.get("tags") or []))
    wide().print(table)
    say(f"{len(entries)} deployments written to {path}; deploy them: prefect deploy --all --prefect-file {path}")
    return 0
