"""emergency-kill-switch, -reduce-only, -cancel-all, -flatten: the runbooks' "Emergency Procedures", on demand.

Operations runbook: 1. Emergency Stop (RISK_KILL_SWITCH_ENABLED=1), 2. Reduce-Only Mode (RISK_REDUCE_ONLY_MODE=1),
3. Position Emergency Close (reduce-only, then market exits). Perpetuals runbook, Emergency Shutdown: kill switch,
then force-cancel all orders. A running bot cannot see a new environment variable, so a switch here is the Prefect
Variable (read by every bot each cycle, see prefect_adapter/controls.py) and the STATE_DIR flag file (read by a bot
on this machine, with or without Prefect).

Every run is idempotent, publishes a table artifact of exactly what it did (switches with their values before,
orders cancelled with their ids, exits sent) and opens a SEV-1 incident (emergency:<procedure>). Turning the kill
switch off resolves the kill-switch and cancel-all incidents; turning reduce-only off resolves reduce-only and
flatten. Run from the UI, `prefect deployment run 'emergency-kill-switch/on-demand'`, or `perps-bot kill-switch on`.

Accounts (ACCOUNTS_FILE): the kill switch and reduce-only are every account's (account=all, the default): their
Variable reaches every bot on every machine, and each account's flag file is set; a name is refused, since a flag
file alone would reach only a bot on this machine. One account is stopped with emergency-cancel-all or
emergency-flatten and its name: those change orders, so with declared accounts they never guess (account is
required, a name or all); without a file they work on the environment's account, as before.

Paper exchange: its account is a file the running bot keeps in memory, so cancels and exits from here are overwritten
by a bot that is still running; turn the kill switch on (the bot stops sending orders) and stop the bot first.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.states import State

from flows.accounts import bad_input, choose_accounts, for_each_account, named_accounts
from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.artifacts import account_key, publish_markdown, publish_table
from prefect_adapter.runs import current_flow_run_id, flow_run_url
from tasks.emergency import (
    cancel_all_orders,
    flatten_positions,
    open_emergency_incident,
    resolve_emergency_incidents,
    set_flag_file,
    set_prefect_variable,
)
from trader.account_names import ALL_ACCOUNTS
from trader.accounts import declared
from trader.emergency.procedures import PROCEDURES, RESOLVED_BY, TITLES, CancelResult, Switch, SwitchChange
from trader.emergency.render import (
    incident_evidence,
    procedure_markdown,
    procedure_rows,
    procedure_summary,
    still_set_notes,
    turned_off,
)
from trader.errors import ConfigError
from trader.settings import Settings

Result = dict[str, Any] | State  # one account's result (no accounts file, as before), else {account: result}


@flow(name="emergency-kill-switch", log_prints=False, persist_result=False, timeout_seconds=900, **RUNBOOK_HOOKS)
def emergency_kill_switch(
    enabled: bool = True, profile: str = "dev", reason: str = "", account: str = ALL_ACCOUNTS
) -> Result:
    """Emergency Stop: kill switch on (Prefect Variable kill_switch and every account's flag file) and cancel every
    working order of every account; enabled=false clears both and resolves the incidents. Every account only."""
    return _switch_everywhere("kill_switch", enabled, profile, reason, account)


@flow(name="emergency-reduce-only", log_prints=False, persist_result=False, timeout_seconds=300, **RUNBOOK_HOOKS)
def emergency_reduce_only(
    enabled: bool = True, profile: str = "dev", reason: str = "", account: str = ALL_ACCOUNTS
) -> Result:
    """Reduce-Only Mode: only orders that shrink a position (Prefect Variable reduce_only and every account's flag
    file); enabled=false clears both and resolves the incidents. Every account only."""
    return _switch_everywhere("reduce_only", enabled, profile, reason, account)


@flow(name="emergency-cancel-all", log_prints=False, persist_result=False, timeout_seconds=900, **RUNBOOK_HOOKS)
def emergency_cancel_all(profile: str = "dev", reason: str = "", account: str | None = None) -> Result:
    """Force cancel all orders: every working order on the account's broker, in batches of 100, recorded in the
    ledger. With declared accounts, `account` is required: a name, or "all"."""
    try:
        accounts = named_accounts("emergency-cancel-all", account, profile)
    except ConfigError as error:
        return bad_input(error)
    return for_each_account(
        "emergency-cancel-all", account, profile, lambda s: _cancel_all_of(s, reason), accounts=accounts, figures=_row
    )


@flow(name="emergency-flatten", log_prints=False, persist_result=False, timeout_seconds=900, **RUNBOOK_HOOKS)
def emergency_flatten(
    profile: str = "dev",
    symbols: list[str] | None = None,
    request_id: str | None = None,
    reason: str = "",
    account: str | None = None,
) -> Result:
    """Position Emergency Close: reduce-only on (the account's flag file; the Variable too when every account is
    flattened), cancel working orders, then a reduce-only market sell of each spot position in `symbols` (default
    the account's symbols). request_id (default: this flow run's id) makes a retry find its exits instead of selling
    twice. With declared accounts, `account` is required: a name, or "all"."""
    try:
        accounts = named_accounts("emergency-flatten", account, profile)
    except ConfigError as error:
        return bad_input(error)
    # The Variable reduce_only reaches every bot: set only when every account is flattened. One account's bot stands
    # down under the operator's override of its lease (trader.emergency.procedures.flatten) and reads its flag file.
    every = account == ALL_ACCOUNTS or declared(accounts[0]) is None
    variable = [set_prefect_variable("reduce_only", True)] if every else []
    request = request_id or str(current_flow_run_id())
    return for_each_account(
        "emergency-flatten",
        account,
        profile,
        lambda s: _flatten_of(s, request, symbols or s.symbols, variable, reason),
        accounts=accounts,
        figures=_row,
    )


def _switch_everywhere(switch: Switch, enabled: bool, profile: str, reason: str, account: str) -> Result:
    """Each account's flag file (and, for the kill switch on, its cancel-all) while the Variable is written once:
    a slow Prefect API never delays the flag files."""
    flow_name = f"emergency-{PROCEDURES[switch]}"
    try:
        accounts = choose_accounts(account, profile)
        if account != ALL_ACCOUNTS and declared(accounts[0]) is not None:
            raise ConfigError(
                f"{flow_name}: account {account!r}: the {PROCEDURES[switch]} switch is every account's (its Prefect "
                f"Variable reaches every bot); run it with account=all, or stop one account with emergency-cancel-all "
                f"or emergency-flatten account={account}"
            )
    except ConfigError as error:
        return bad_input(error)
    variable = set_prefect_variable.submit(switch, enabled)
    return for_each_account(
        flow_name,
        account,
        profile,
        lambda s: _switch_of(s, switch, enabled, variable, reason),
        accounts=accounts,
        figures=_row,
        migrate=switch == "kill_switch" and enabled,
    )


def _switch_of(
    settings: Settings, switch: Switch, enabled: bool, variable: PrefectFuture[SwitchChange], reason: str
) -> dict[str, Any]:
    """One account: the flag file first (works even if the API is slow), its orders cancelled for the kill switch,
    then the Variable's change beside it in the account's table."""
    flag = set_flag_file(settings, switch, enabled, reason)
    cancelled = _cancel_all(settings) if enabled and switch == "kill_switch" else None
    switches = [flag, variable.result()]
    return _finish(settings, PROCEDURES[switch], switches, cancelled, title=TITLES[switch], reason=reason)


def _cancel_all_of(settings: Settings, reason: str) -> dict[str, Any]:
    cancelled = _cancel_all(settings)
    title = f"cancel-all: {cancelled.cancelled} working order(s) cancelled by an operator"
    return _finish(settings, "cancel-all", [], cancelled, title=title, reason=reason)


def _flatten_of(
    settings: Settings, request_id: str, symbols: list[str], variable: list[SwitchChange], reason: str
) -> dict[str, Any]:
    result = flatten_positions(settings, request_id, symbols)
    get_run_logger().warning(result.summary())
    rows = [*(change.row() for change in variable), *result.rows()]
    return _finish(
        settings,
        "flatten",
        [result.reduce_only, *variable],
        result.cancelled,
        title=result.title(),
        reason=reason,
        rows=rows,
        extra={
            "exits_sent": len(result.sent),
            "exits_already_sent": len(result.exits) - len(result.sent),
            "skipped": [s.symbol for s in result.skipped],
            "request_id": result.request_id,
        },
    )


def _cancel_all(settings: Settings) -> CancelResult:
    result = cancel_all_orders(settings)
    get_run_logger().warning(result.summary())
    return result


def _row(result: dict[str, Any]) -> dict[str, object]:
    """An account's row in the summary: orders cancelled, the incident opened or those resolved."""
    return {
        "status": "resolved" if result["resolved"] else "done",
        "cancelled": result["cancelled"],
        "incident": result["incident_id"] or "",
        "resolved": ", ".join(result["resolved"]),
    }


def _finish(
    settings: Settings,
    procedure: str,
    switches: list[SwitchChange],
    cancelled: CancelResult | None,
    *,
    title: str,
    reason: str,
    rows: list[dict[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish what was done, then open the SEV-1 incident (or resolve it when a switch was turned off)."""
    logger = get_run_logger()
    if rows is None:
        rows = procedure_rows(switches, cancelled)
    off = turned_off(switches)
    notes = still_set_notes(settings, off)
    summary = procedure_summary(procedure, switches, cancelled)
    url = flow_run_url(current_flow_run_id())
    incident_id = None
    resolved: list[str] = []
    if off:
        resolved = resolve_emergency_incidents(settings, [p for s in off for p in RESOLVED_BY[s]])
    else:
        incident_id = open_emergency_incident(settings, procedure, title, incident_evidence(reason, rows), url)
    publish_table(account_key(f"emergency-{procedure}", settings.account), rows, description=summary[:500])
    publish_markdown(
        account_key(f"emergency-{procedure}-summary", settings.account),
        procedure_markdown(procedure, reason, switches, cancelled, notes, incident_id, resolved),
        description=summary[:500],
    )
    for note in notes:
        logger.warning(note)
    logger.warning(summary)
    return {
        "procedure": procedure,
        "switches": {c.where: {"before": c.before, "after": c.after} for c in switches},
        "cancelled": cancelled.cancelled if cancelled is not None else 0,
        "cancelled_order_ids": [o.order_id for o in cancelled.orders if o.cancelled] if cancelled is not None else [],
        "incident_id": incident_id,
        "resolved": resolved,
        **(extra or {}),
    }
