"""Every runbook flow's "for each account": which accounts a run works on, one task run per account, one summary.

A runbook flow takes `account`: unset or "all" is every account ACCOUNTS_FILE declares (no file: the environment's one
account, as before accounts), a name is that account only. An account that is not declared fails the run before
anything is done, with the one line naming it (a Failed state named BadInput: no incident, nothing written).

Each account's work is its own task run (tasks/accounts.py), at most ACCOUNTS_MAX_CONCURRENCY at once; one account
that fails does not stop or hide the others. The run publishes each account's own artifacts (keys suffixed with the
account, prefect_adapter.artifacts.account_key) and one summary table, `<runbook>-accounts`: account, status and the
runbook's key figures. It returns the account's result when it ran the environment's single account (no file, as
before), else {account: result}; it fails, after the summary is published, when any account failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Failed, State

from flows.hooks import BAD_INPUT_STATE
from prefect_adapter.artifacts import publish_table
from prefect_adapter.secrets import load_settings, secret_block_value, with_secret_blocks
from tasks.accounts import account_share
from tasks.ledger import migrate_ledger
from trader.accounts import declared, selected_accounts
from trader.errors import ConfigError
from trader.settings import Settings

R = TypeVar("R")
Figures = Callable[[Any], Mapping[str, object]]


class AccountsFailed(Exception):
    """Some accounts' share of a runbook run failed (the others completed; the summary table says which)."""


@dataclass(frozen=True)
class AccountOutcome:
    account: str
    result: Any = None
    error: BaseException | None = None


def choose_accounts(account: str | None, profile: str) -> list[Settings]:
    """The settings of each account the run works on (ConfigError, one line, for an undeclared account)."""
    settings = load_settings(profile=profile)
    if declared(settings) is None and account in (None, "all", settings.account):
        return [settings]  # the environment's one account, as before accounts: its Slack secrets already read
    chosen = selected_accounts(settings, account, profile=profile, secret=secret_block_value)
    return [with_secret_blocks(one) for one in chosen]


def named_accounts(flow_name: str, account: str | None, profile: str) -> list[Settings]:
    """The accounts a procedure that changes orders works on: with declared accounts it never guesses (a name or
    "all"); without a file, the environment's one account as before."""
    accounts = choose_accounts(account, profile)
    if account is None and declared(accounts[0]) is not None:
        names = ", ".join(a.account for a in accounts)
        raise ConfigError(
            f"{flow_name}: account: required with {accounts[0].accounts_file} (declared: {names}); name one, or all"
        )
    return accounts


def bad_input(error: ConfigError) -> State:
    """The Failed state of a run refused for its parameters: the one line, no incident (flows/hooks.py)."""
    get_run_logger().error("%s", error)
    return Failed(message=str(error), name=BAD_INPUT_STATE)


def for_each_account(
    runbook: str,
    account: str | None,
    profile: str,
    work: Callable[[Settings], R],
    *,
    figures: Figures | None = None,
    migrate: bool = True,
    max_concurrency: int | None = None,
    accounts: list[Settings] | None = None,
) -> R | dict[str, R] | State:
    """work(settings) for each chosen account, each its own task run; then the summary table `<runbook>-accounts`.

    figures(result): the row's key figures (a "status" among them, else "ok"). migrate: the ledger schema brought to
    head once per database first (accounts share it; their tasks do not migrate). max_concurrency: default
    ACCOUNTS_MAX_CONCURRENCY. accounts: already chosen by the flow (choose_accounts), else chosen here.
    """
    if accounts is None:
        try:
            accounts = choose_accounts(account, profile)
        except ConfigError as error:
            return bad_input(error)
    if migrate:
        migrate_accounts(accounts)
    outcomes = run_shares(runbook, accounts, work, max_concurrency or accounts[0].accounts_max_concurrency)
    publish_summary(runbook, outcomes, figures)
    failed = [o for o in outcomes if o.error is not None]
    if len(outcomes) == 1 and failed:
        raise failed[0].error  # type: ignore[misc]  # one account: its own error, as before accounts
    if failed:
        raise AccountsFailed(
            f"{runbook}: {len(failed)} of {len(outcomes)} accounts failed: "
            + "; ".join(f"{o.account}: {describe(o.error)}" for o in failed)
        )
    if len(outcomes) == 1 and declared(accounts[0]) is None:
        return outcomes[0].result
    return {o.account: o.result for o in outcomes}


def migrate_accounts(accounts: list[Settings]) -> None:
    """The ledger schema brought to head once per database, before any account's tasks open theirs."""
    for settings in {s.database_url: s for s in accounts}.values():
        migrate_ledger(settings)


def run_shares(
    runbook: str, accounts: list[Settings], work: Callable[[Settings], R], limit: int
) -> list[AccountOutcome]:
    """One account_share task run per account, at most `limit` running at once; outcomes in the accounts' order."""
    futures: list[PrefectFuture[R]] = []
    running: list[PrefectFuture[R]] = []
    for settings in accounts:
        if len(running) >= limit:
            running.remove(next(iter(as_completed(running))))
        future = account_share.submit(runbook, settings.account, work, settings)
        futures.append(future)
        running.append(future)
    outcomes = []
    for settings, future in zip(accounts, futures, strict=True):
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            get_run_logger().error("%s for account %s failed: %s", runbook, settings.account, describe(result))
            outcomes.append(AccountOutcome(settings.account, error=result))
        else:
            outcomes.append(AccountOutcome(settings.account, result=result))
    return outcomes


def publish_summary(runbook: str, outcomes: list[AccountOutcome], figures: Figures | None) -> None:
    """One table, one row per account: account, status, the runbook's key figures (or the error)."""
    rows: list[dict[str, object]] = []
    for outcome in outcomes:
        if outcome.error is not None:
            rows.append({"account": outcome.account, "status": "error", "error": describe(outcome.error)})
            continue
        shown = dict(figures(outcome.result)) if figures is not None else {}
        rows.append({"account": outcome.account, "status": shown.pop("status", "ok"), **shown})
    columns = list(dict.fromkeys(column for row in rows for column in row))
    table = [{column: row.get(column, "") for column in columns} for row in rows]
    bad = [o.account for o in outcomes if o.error is not None]
    description = f"{runbook}: {len(outcomes)} account(s)" + (f", failed: {', '.join(bad)}" if bad else ", all ran")
    publish_table(f"{runbook}-accounts", table, description=description)


def describe(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}" if error is not None else ""
