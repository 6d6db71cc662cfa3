"""perps-bot kill-switch on|off|status, reduce-only on|off|status, cancel-all, flatten [--yes]: the runbooks' emergency
procedures without Prefect (trader/emergency/procedures.py: the flag files, the broker, the ledger, the incident),
plus the Prefect Variable when PREFECT_API_URL is set and answers, and a SEV-1 incident per procedure."""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import TYPE_CHECKING

from rich.table import Table

from deployments.cli.output import print_rows, say, wide
from deployments.cli.variables import read_variable, write_variable
from prefect_adapter.secrets import with_secret_blocks
from trader.errors import ConfigError
from trader.settings import Settings

if TYPE_CHECKING:
    from trader.emergency.procedures import Switch

EMERGENCY_COMMANDS = ("kill-switch", "reduce-only", "cancel-all", "flatten")
SWITCH_ACTIONS = ("on", "off", "status")


def emergency_command(settings: Settings, args: argparse.Namespace) -> int:
    """The runbooks' emergency procedures without Prefect: the flag files, the broker, the ledger, the incident; the
    Prefect Variable too when PREFECT_API_URL is set and answers."""
    from trader.logs import configure_logging

    if args.command in ("kill-switch", "reduce-only"):
        if args.action not in SWITCH_ACTIONS:
            got = f" (got {args.action!r})" if args.action else ""
            raise ConfigError(f"{args.command}: expected one of {', '.join(SWITCH_ACTIONS)}{got}")
    elif args.action is not None:
        raise ConfigError(f"{args.command}: takes no action (got {args.action!r})")
    if args.checkpoint_id is not None:
        raise ConfigError(f"{args.command}: unexpected argument {args.checkpoint_id!r}")
    configure_logging(settings.log_file, stderr=False)
    accounts = emergency_accounts(settings, args)
    if args.command == "kill-switch":
        return switch_command(accounts, "kill_switch", args.action, args.note)
    if args.command == "reduce-only":
        return switch_command(accounts, "reduce_only", args.action, args.note)
    # --account all: each account in turn; the worst exit code (an error still stops at once, as for one account)
    return max([_one_account(account, args) for account in accounts])


def _one_account(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "cancel-all":
        return cancel_all_command(settings, args.note)
    return flatten_command(settings, args)


def emergency_accounts(settings: Settings, args: argparse.Namespace) -> list[Settings]:
    """The accounts an emergency command works on, as the emergency flows decide (flows/emergency.py): without an
    accounts file the environment's one; the switches are every declared account's (their flag files; a name is
    refused: the Variable reaches every bot, a flag file only this machine's); cancel-all and flatten need --account
    (a name, or all) when accounts are declared. settings: already the named account's when --account names one."""
    from prefect_adapter.secrets import secret_block_value
    from trader.accounts import ALL_ACCOUNTS, declared, selected_accounts

    specs = declared(settings)
    account = getattr(args, "account", None)
    if specs is None:
        return [settings]
    if args.command in ("kill-switch", "reduce-only"):
        if account not in (None, ALL_ACCOUNTS):
            raise ConfigError(
                f"{args.command}: --account {account}: the switch is every account's (its Prefect Variable reaches "
                f"every bot); leave --account out, or stop one account with cancel-all or flatten --account {account}"
            )
        return selected_accounts(settings, ALL_ACCOUNTS, profile=args.profile, secret=secret_block_value)
    if account is None:
        names = ", ".join(spec.name for spec in specs)
        raise ConfigError(
            f"{args.command}: --account: required with {settings.accounts_file} (declared: {names}); name one, or all"
        )
    if account == ALL_ACCOUNTS:
        return selected_accounts(settings, ALL_ACCOUNTS, profile=args.profile, secret=secret_block_value)
    return [settings]


def switch_command(accounts: list[Settings], switch: Switch, action: str, note: str) -> int:
    """on: each account's flag file + the Prefect Variable (+ cancel-all of each account for the kill switch), a
    SEV-1 incident per account; off: cleared, resolved."""
    from trader.emergency.procedures import (
        ENV_NAMES,
        PROCEDURES,
        RESOLVED_BY,
        TITLES,
        operator_cancel_all,
        resolve_incidents,
        set_switch,
        switch_in_environment,
    )

    if action == "status":
        return max(switch_status(settings, switch) for settings in accounts)
    enabled = action == "on"
    flags = [set_switch(settings, switch, enabled, reason=note or "perps-bot") for settings in accounts]
    variable, problem = write_variable(switch, enabled)
    procedure = PROCEDURES[switch]
    for settings, flag in zip(accounts, flags, strict=True):
        changes = [flag] if variable is None else [flag, variable]
        rows = [c.row() for c in changes]
        cancelled = None
        if enabled and switch == "kill_switch":
            cancelled = operator_cancel_all(settings)
            rows += cancelled.rows()
        who = f" ({settings.account})" if len(accounts) > 1 else ""
        print_rows(f"Emergency {procedure} {action}{who}", rows)
        for change in changes:
            say(change.describe())
        if cancelled is not None:
            say(cancelled.summary())
        if enabled:
            _incident(settings, procedure, TITLES[switch], note, rows)
        else:
            resolved = resolve_incidents(with_secret_blocks(settings), RESOLVED_BY[switch])
            say(f"incidents resolved{who}: {', '.join(resolved) or 'none were open'}")
    if problem:
        done = "set" if enabled else "cleared"
        say(f"[yellow]the flag file was {done}; the Prefect Variable {switch} was not: {problem}[/]")
    if not enabled and switch_in_environment(accounts[0], switch):
        say(f"[yellow]{ENV_NAMES[switch]} is set in this environment: the switch stays ON where it is set[/]")
    return 0


def switch_status(settings: Settings, switch: Switch) -> int:
    """Where the switch is on: this environment, the flag file, the Prefect Variable."""
    from trader.emergency.procedures import ENV_NAMES, flag_file, switch_in_environment

    env_on = switch_in_environment(settings, switch)
    path = flag_file(settings, switch)
    variable = read_variable(switch)
    table = Table(title=f"{switch} status")
    table.add_column("source")
    table.add_column("value")
    table.add_row(f"{ENV_NAMES[switch]} (this environment)", "ON" if env_on else "OFF")
    table.add_row(f"flag file {path}", "ON" if path.exists() else "OFF")
    table.add_row(f"Prefect Variable {switch}", variable)
    wide().print(table)
    effective = env_on or path.exists() or variable.startswith("ON")
    say(f"{switch}: {'ON' if effective else 'OFF'}")
    return 0


def cancel_all_command(settings: Settings, note: str) -> int:
    """Every working order on the broker cancelled in batches of 100 and recorded in the ledger; SEV-1 incident."""
    from trader.emergency.procedures import operator_cancel_all

    result = operator_cancel_all(settings)
    rows = result.rows()
    print_rows("Emergency cancel-all", rows)
    say(result.summary())
    title = f"cancel-all: {result.cancelled} working order(s) cancelled"
    _incident(settings, "cancel-all", title, note, rows)
    return 0


def flatten_command(settings: Settings, args: argparse.Namespace) -> int:
    """Reduce-only on, cancel working orders, reduce-only market exits; asks first unless --yes."""
    from trader.emergency.procedures import flatten_account

    symbols = [s.strip().upper() for s in (args.symbols or "").split(",") if s.strip()] or settings.symbols
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("flatten: sells every position at market; pass --yes to confirm (not interactive)")
        answer = input(f"Flatten {', '.join(symbols)}: cancel all orders and sell every position at market? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            say("flatten: not confirmed, nothing done")
            return 1
    request_id = args.request_id or f"cli-{uuid.uuid4().hex[:16]}"
    variable, problem = write_variable("reduce_only", True)
    result = flatten_account(settings, request_id=request_id, symbols=symbols)
    rows = ([variable.row()] if variable is not None else []) + result.rows()
    print_rows(f"Emergency flatten {request_id}", rows)
    say(result.summary())
    if problem:
        say(f"[yellow]the flag file was set; the Prefect Variable reduce_only was not: {problem}[/]")
    say(f"retry with --request-id {request_id} to never sell twice")
    _incident(settings, "flatten", result.title(), args.note, rows)
    return 0


def _incident(settings: Settings, procedure: str, title: str, note: str, rows: list[dict[str, str]]) -> None:
    from trader.emergency.procedures import incident_fingerprint, open_incident
    from trader.emergency.render import incident_evidence

    incident_id = open_incident(with_secret_blocks(settings), procedure, title, incident_evidence(note, rows))
    say(f"SEV-1 incident #{incident_id} ({incident_fingerprint(procedure)})")
