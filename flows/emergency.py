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

Paper exchange: its account is a file the running bot keeps in memory, so cancels and exits from here are overwritten
by a bot that is still running; turn the kill switch on (the bot stops sending orders) and stop the bot first.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.artifacts import publish_markdown, publish_table
from prefect_adapter.runs import current_flow_run_id, flow_run_url
from prefect_adapter.secrets import load_settings
from tasks.emergency import (
    cancel_all_orders,
    flatten_positions,
    open_emergency_incident,
    resolve_emergency_incidents,
    set_flag_file,
    set_prefect_variable,
)
from tasks.ledger import migrate_ledger
from trader.emergency.procedures import RESOLVED_BY, TITLES, CancelResult, Switch, SwitchChange
from trader.emergency.render import (
    incident_evidence,
    procedure_markdown,
    procedure_rows,
    procedure_summary,
    still_set_notes,
    turned_off,
)
from trader.settings import Settings


@flow(name="emergency-kill-switch", log_prints=False, persist_result=False, timeout_seconds=900, **RUNBOOK_HOOKS)
def emergency_kill_switch(enabled: bool = True, profile: str = "dev", reason: str = "") -> dict[str, Any]:
    """Emergency Stop: kill switch on (Prefect Variable kill_switch and the flag file) and cancel every working
    order; enabled=false clears both and resolves the incident."""
    settings = load_settings(profile=profile)
    switches = _set_switch(settings, "kill_switch", enabled, reason)
    cancelled = _cancel_all(settings) if enabled else None
    return _finish(settings, "kill-switch", switches, cancelled, title=TITLES["kill_switch"], reason=reason)


@flow(name="emergency-reduce-only", log_prints=False, persist_result=False, timeout_seconds=300, **RUNBOOK_HOOKS)
def emergency_reduce_only(enabled: bool = True, profile: str = "dev", reason: str = "") -> dict[str, Any]:
    """Reduce-Only Mode: only orders that shrink a position (Prefect Variable reduce_only and the flag file);
    enabled=false clears both and resolves the incident."""
    settings = load_settings(profile=profile)
    switches = _set_switch(settings, "reduce_only", enabled, reason)
    return _finish(settings, "reduce-only", switches, None, title=TITLES["reduce_only"], reason=reason)


@flow(name="emergency-cancel-all", log_prints=False, persist_result=False, timeout_seconds=900, **RUNBOOK_HOOKS)
def emergency_cancel_all(profile: str = "dev", reason: str = "") -> dict[str, Any]:
    """Force cancel all orders: every working order on the broker, in batches of 100, recorded in the ledger."""
    settings = load_settings(profile=profile)
    cancelled = _cancel_all(settings)
    title = f"cancel-all: {cancelled.cancelled} working order(s) cancelled by an operator"
    return _finish(settings, "cancel-all", [], cancelled, title=title, reason=reason)


@flow(name="emergency-flatten", log_prints=False, persist_result=False, timeout_seconds=900, **RUNBOOK_HOOKS)
def emergency_flatten(
    profile: str = "dev", symbols: list[str] | None = None, request_id: str | None = None, reason: str = ""
) -> dict[str, Any]:
    """Position Emergency Close: reduce-only on (Variable and flag file), cancel working orders, then a reduce-only
    market sell of each spot position in `symbols` (default TRADING_SYMBOLS). request_id (default: this flow run's
    id) makes a retry find its exits instead of selling twice."""
    logger = get_run_logger()
    settings = load_settings(profile=profile)
    switches = [set_prefect_variable("reduce_only", True)]
    migrate_ledger(settings)
    result = flatten_positions(settings, request_id or str(current_flow_run_id()), symbols or settings.symbols)
    logger.warning(result.summary())
    rows = [switches[0].row(), *result.rows()]
    title = result.title()
    return _finish(
        settings,
        "flatten",
        [result.reduce_only, *switches],
        result.cancelled,
        title=title,
        reason=reason,
        rows=rows,
        extra={
            "exits_sent": len(result.sent),
            "exits_already_sent": len(result.exits) - len(result.sent),
            "skipped": [s.symbol for s in result.skipped],
            "request_id": result.request_id,
        },
    )


def _set_switch(settings: Settings, switch: Switch, enabled: bool, reason: str) -> list[SwitchChange]:
    """The flag file first (works even if the API is slow), then the Prefect Variable."""
    return [set_flag_file(settings, switch, enabled, reason), set_prefect_variable(switch, enabled)]


def _cancel_all(settings: Settings) -> CancelResult:
    migrate_ledger(settings)
    result = cancel_all_orders(settings)
    get_run_logger().warning(result.summary())
    return result


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
    publish_table(f"emergency-{procedure}", rows, description=summary[:500])
    publish_markdown(
        f"emergency-{procedure}-summary",
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
