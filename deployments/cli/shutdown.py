"""perps-bot shutdown [--timeout 300] [--account NAME|all] [--note WHY]: the perpetuals runbook's Graceful Shutdown
without Prefect (trader/shutdown/procedure.py), one step after another, each step's line as it ends, a progress bar
while it waits for flat, then the table of every step.

Exit 0 when every step is ok; 1 when one failed (the later ones not run, a SEV-2 incident opened); 2 for bad input
(--timeout not a number of seconds above 0), with nothing written or sent. With PREFECT_API_URL set, step 7 also
cancels the account's trading-bot runs through the API; without it, the stop request and the lease decide.
"""

from __future__ import annotations

import argparse
import math
import os
import uuid
from typing import TYPE_CHECKING

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from deployments.cli.output import out, say, wide
from trader.errors import ConfigError
from trader.settings import Settings

if TYPE_CHECKING:
    from trader.shutdown.procedure import BotRuns
    from trader.shutdown.results import FlatProgress, ShutdownResult, StepResult

DEFAULT_TIMEOUT = "300"


def parse_timeout(text: str) -> float:
    """--timeout in seconds, above 0; ConfigError (one line naming --timeout and the fix) otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"--timeout: {text!r} is not a number of seconds above 0; give the wait for flat in seconds, "
            f"e.g. --timeout {DEFAULT_TIMEOUT}"
        )
    return value


def shutdown_command(settings: Settings, args: argparse.Namespace) -> int:
    """The graceful shutdown of the account (or of each account with --account all); the worst exit code."""
    from deployments.cli.emergency import emergency_accounts
    from trader.logs import configure_logging

    timeout = parse_timeout(args.timeout)  # first: bad input writes and sends nothing
    if args.action is not None:
        raise ConfigError(f"shutdown: takes no action (got {args.action!r}); the wait is set with --timeout")
    accounts = emergency_accounts(settings, args)
    configure_logging(settings.log_file, stderr=False)
    return max([_one_account(account, timeout, args.note, several=len(accounts) > 1) for account in accounts])


def _one_account(settings: Settings, timeout: float, note: str, *, several: bool) -> int:
    from prefect_adapter.secrets import with_secret_blocks
    from trader.shutdown.procedure import GracefulShutdown, open_shutdown_incident, resolve_shutdown_incident

    request_id = f"shutdown-{uuid.uuid4().hex[:16]}"
    who = f" of account {settings.account}" if several else ""
    say(f"graceful shutdown{who} ({request_id}): wait for flat up to {timeout:g} s")
    with Progress(
        TextColumn("[bold]wait for flat[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% of the exposure closed"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=out,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=100, start=False)

        def show(progress: FlatProgress) -> None:
            bar.start_task(task)
            bar.update(task, completed=progress.percent, description=progress.describe())

        def step_done(result: StepResult) -> None:
            if result.status != "not run":
                mark = "[green]ok[/]" if result.status == "ok" else "[red]FAILED[/]"
                bar.console.print(f"{result.step.label}: {mark} {result.detail}", soft_wrap=True, markup=True)

        with GracefulShutdown(
            settings, timeout, request_id=request_id, reason=note, bot_runs=_bot_runs(settings), progress=show
        ) as shutdown:
            result = shutdown.run(on_step=step_done)
    _print_table(f"Graceful shutdown{who}", result)
    say(result.summary())
    if result.ok:
        if resolve_shutdown_incident(with_secret_blocks(settings)):
            say("the open graceful-shutdown incident is resolved")
        say("reduce-only stays on: perps-bot reduce-only off before the bot trades again")
        return 0
    incident_id = open_shutdown_incident(with_secret_blocks(settings), result, note)
    say(f"SEV-2 incident #{incident_id} (graceful-shutdown)")
    return 1


def _bot_runs(settings: Settings) -> BotRuns | None:
    """The account's trading-bot runs through the Prefect API when PREFECT_API_URL is set."""
    if not os.environ.get("PREFECT_API_URL"):
        return None
    from prefect_adapter.runs import PrefectBotRuns
    from trader.accounts import declared

    return PrefectBotRuns(unnamed_runs=declared(settings) is None)


def _print_table(title: str, result: ShutdownResult) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("step", "result", "detail", "seconds"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    colour = {"ok": "green", "failed": "red", "not run": "yellow"}
    for row, step in zip(result.rows(), result.steps, strict=True):
        table.add_row(row["step"], f"[{colour[step.status]}]{row['result']}[/]", row["detail"], row["seconds"])
    wide().print(table)
