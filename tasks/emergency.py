"""Tasks of the emergency flows: switches (flag file and Prefect Variable), cancel-all, flatten, the SEV-1 incident."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.switches import VARIABLES, SwitchVariables, VariablesUnavailable, parse_switch
from tasks.reconcile import is_transient
from trader.brokers.base import Broker
from trader.ledger import Ledger
from trader.risk.emergency import (
    CancelResult,
    FlattenResult,
    Switch,
    SwitchChange,
    cancel_all,
    flatten,
    open_incident,
    operator_override,
    resolve_incidents,
    set_switch,
)
from trader.settings import Settings


@task(name="set-flag-file", retries=2, retry_delay_seconds=[1, 5], tags=["emergency", "state"], cache_policy=NO_CACHE)
def set_flag_file(settings: Settings, switch: Switch, enabled: bool, reason: str) -> SwitchChange:
    """STATE_DIR/KILL_SWITCH or REDUCE_ONLY: the bot on this machine reads it every cycle."""
    return set_switch(settings, switch, enabled, reason=reason)


@task(
    name="set-prefect-variable",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=lambda task, task_run, state: _raised(state, VariablesUnavailable),
    tags=["emergency", "prefect"],
    cache_policy=NO_CACHE,
)
def set_prefect_variable(switch: Switch, enabled: bool) -> SwitchChange:
    """The Prefect Variable every bot reads each cycle, wherever it runs; returns its value before."""
    variables = SwitchVariables()
    try:
        before = variables.write(switch, enabled)
    finally:
        variables.close()
    was = False if before is None else parse_switch(before)
    return SwitchChange(switch, f"Prefect Variable {VARIABLES[switch]}", was, enabled)


@task(
    name="cancel-all-orders",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
    timeout_seconds=300,
    tags=["emergency", "broker", "ledger"],
    cache_policy=NO_CACHE,
)
def cancel_all_orders(broker: Broker, ledger: Ledger, settings: Settings) -> CancelResult:
    """Every working order cancelled in batches of 100, under the operator's override of the account's lease so a
    running bot stands down before its next order (safe to retry: nothing left means nothing to do)."""
    with operator_override(ledger, settings, "cancel-all"):
        return cancel_all(broker, ledger)


@task(
    name="flatten-positions",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
    timeout_seconds=300,
    tags=["emergency", "broker", "ledger"],
    cache_policy=NO_CACHE,
)
def flatten_positions(
    broker: Broker, ledger: Ledger, settings: Settings, request_id: str, symbols: list[str]
) -> FlattenResult:
    """Reduce-only market exits (safe to retry: the same request_id finds its exits instead of selling twice)."""
    return flatten(broker, ledger, settings, request_id=request_id, symbols=symbols)


@task(name="open-emergency-incident", retries=2, retry_delay_seconds=[2, 10], tags=["alerts"], cache_policy=NO_CACHE)
def open_emergency_incident(
    settings: Settings, procedure: str, title: str, evidence: str, flow_run_url: str | None
) -> int | None:
    """A SEV-1 incident (an operator stopped trading by hand), announced through Slack when configured."""
    return open_incident(settings, procedure, title, evidence, flow_run_url)


@task(
    name="resolve-emergency-incidents", retries=2, retry_delay_seconds=[2, 10], tags=["alerts"], cache_policy=NO_CACHE
)
def resolve_emergency_incidents(settings: Settings, procedures: list[str]) -> list[str]:
    """Resolve the procedures' open incidents; returns the fingerprints that were open."""
    return resolve_incidents(settings, procedures)


def _raised(state: object, kind: type[BaseException]) -> bool:
    try:
        state.result()  # type: ignore[attr-defined]
    except kind:
        return True
    except Exception:
        return False
    return False
