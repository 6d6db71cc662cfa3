"""Tasks of the emergency flows: switches (flag file and Prefect Variable), cancel-all, flatten, the SEV-1 incident."""

from __future__ import annotations

from prefect import task

from prefect_adapter.variables import set_switch_variable
from tasks.policies import ALERT, EXCHANGE_WRITE, FLAG_FILE, PREFECT_WRITE
from trader.emergency.procedures import (
    CancelResult,
    FlattenResult,
    Switch,
    SwitchChange,
    flatten_account,
    open_incident,
    operator_cancel_all,
    resolve_incidents,
    set_switch,
)
from trader.settings import Settings


@task(name="set-flag-file", tags=["emergency", "state"], **FLAG_FILE.options())
def set_flag_file(settings: Settings, switch: Switch, enabled: bool, reason: str) -> SwitchChange:
    """STATE_DIR/KILL_SWITCH or REDUCE_ONLY: the bot on this machine reads it every cycle."""
    return set_switch(settings, switch, enabled, reason=reason)


@task(name="set-prefect-variable", tags=["emergency", "prefect"], **PREFECT_WRITE.options())
def set_prefect_variable(switch: Switch, enabled: bool) -> SwitchChange:
    """The Prefect Variable every bot reads each cycle, wherever it runs; returns its value before."""
    return set_switch_variable(switch, enabled)


@task(name="cancel-all-orders", tags=["emergency", "broker", "ledger"], **EXCHANGE_WRITE.options())
def cancel_all_orders(settings: Settings) -> CancelResult:
    """Every working order cancelled in batches of 100, under the operator's override of the account's lease so a
    running bot stands down before its next order (safe to retry: nothing left means nothing to do)."""
    return operator_cancel_all(settings, migrate=False)


@task(name="flatten-positions", tags=["emergency", "broker", "ledger"], **EXCHANGE_WRITE.options())
def flatten_positions(settings: Settings, request_id: str, symbols: list[str]) -> FlattenResult:
    """Reduce-only market exits (safe to retry: the same request_id finds its exits instead of selling twice)."""
    return flatten_account(settings, request_id=request_id, symbols=symbols, migrate=False)


@task(name="open-emergency-incident", tags=["alerts"], **ALERT.options())
def open_emergency_incident(
    settings: Settings, procedure: str, title: str, evidence: str, flow_run_url: str | None
) -> int | None:
    """A SEV-1 incident (an operator stopped trading by hand), announced through Slack when configured."""
    return open_incident(settings, procedure, title, evidence, flow_run_url)


@task(name="resolve-emergency-incidents", tags=["alerts"], **ALERT.options())
def resolve_emergency_incidents(settings: Settings, procedures: list[str]) -> list[str]:
    """Resolve the procedures' open incidents; returns the fingerprints that were open."""
    return resolve_incidents(settings, procedures)
