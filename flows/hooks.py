"""Prefect flow-state hooks that open and resolve incidents; attach them to any flow:

    @flow(on_failure=[incident_on_failure], on_crashed=[incident_on_crashed], on_completion=[resolve_on_completion])

Settings (DATABASE_URL, SLACK_*) come from the environment. A run whose `account` parameter names one account
(`trading-bot/<account>`, or a runbook run for that account) files its incident under that account; a run for every
account (unset or "all") under the environment's ACCOUNT. A hook never raises and never waits long: the ledger write
comes first, Slack calls have short timeouts, and an announcement that fails is delivered by the next hook.
A run whose process dies (OOM, SIGKILL) runs no hook at all: deployments/automations.py covers that case.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect_adapter.runs import flow_run_url
from prefect_adapter.secrets import load_settings
from trader.accounts import ALL_ACCOUNTS, declared
from trader.alerts import IncidentDesk, IncidentKind, redact
from trader.alerts.incidents import open_incident_desk
from trader.errors import ConfigError
from trader.settings import Settings

log = logging.getLogger(__name__)

BOT_FLOW = "trading-bot"
# The state name of a bot run refused because another live bot holds the account: that bot trades, nothing is down.
LEASE_HELD_STATE = "LeaseHeld"
# The state name of a run refused for its parameters (an undeclared account): the operator's typo, nothing is down.
BAD_INPUT_STATE = "BadInput"
# The state name of a run that failed after opening its own incident, with its evidence (a graceful shutdown stopped
# at a failed step: its SEV-2 graceful-shutdown incident): no second incident for the same failure.
INCIDENT_OPENED_STATE = "IncidentOpened"


def flow_fingerprint(flow_name: str) -> str:
    """One incident per flow: a second failure is an update in the same thread, a completion resolves it."""
    return f"flow:{flow_name}"


def incident_kind(flow_name: str, crashed: bool) -> IncidentKind:
    """The trading-bot flow down is "bot offline" (SEV-1); any other flow down is a partial loss (SEV-2)."""
    if flow_name == BOT_FLOW:
        return IncidentKind.BOT_OFFLINE
    return IncidentKind.FLOW_CRASHED if crashed else IncidentKind.FLOW_FAILED


def _run_logger(flow: Any, flow_run: Any) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        from prefect.logging.loggers import flow_run_logger

        return flow_run_logger(flow_run, flow)
    except Exception:
        return log


def run_account(flow_run: Any) -> str | None:
    """The one account a run works on (its `account` parameter), or None for every account (unset or "all")."""
    account = (getattr(flow_run, "parameters", None) or {}).get("account")
    return account if isinstance(account, str) and account and account != ALL_ACCOUNTS else None


def desk_settings(settings: Settings, account: str | None) -> Settings:
    """The settings whose account the incident belongs to: the run's account when it is declared (or, without an
    accounts file, the environment's own), else the environment's.

    Only the name changes: an account's ledger and Slack are the machine's (trader/accounts.py own_files), and a hook
    must not wait on the account's key or Secret blocks. An undeclared name never gets here as a failure worth an
    incident (its run ends BadInput), but should one arrive it is filed where the operator looks by default.
    """
    if account is None or account == settings.account:
        return settings
    try:
        specs = declared(settings)
    except ConfigError:  # a broken accounts file must not cost the incident: it goes to the environment's account
        specs = None
    if specs is None or account not in {spec.name for spec in specs}:
        log.warning("incident of a run for account %r filed under %r (not declared)", account, settings.account)
        return settings
    return settings.model_copy(update={"account": account})


@contextmanager
def _incident_desk(account: str | None = None) -> Iterator[IncidentDesk]:
    """The incident desk of `account` (None: the environment's) on a ledger of its own, disposed when the hook is
    done; pending announcements sent first."""
    with open_incident_desk(desk_settings(load_settings(), account)) as desk:
        desk.deliver_pending()
        yield desk


def _open(flow: Any, flow_run: Any, state: Any, *, crashed: bool) -> None:
    try:
        name = str(getattr(flow, "name", "unknown-flow"))
        what = "crashed" if crashed else "failed"
        evidence = (
            f"{getattr(state, 'message', None) or f'the flow run {what} without a message'}\n"
            f"flow run {getattr(flow_run, 'name', '?')} ({flow_run.id}), state {getattr(state, 'name', what)}"
        )
        with _incident_desk(run_account(flow_run)) as desk:
            incident_id = desk.raise_incident(
                incident_kind(name, crashed),
                f"flow {name} {what}",
                evidence,
                fingerprint=flow_fingerprint(name),
                flow_run_url=flow_run_url(flow_run.id),
            )
        _run_logger(flow, flow_run).info("incident #%s opened for flow %s (%s)", incident_id, name, what)
    except Exception as error:  # a hook that raises would bury the flow's own failure
        log.error("incident hook for a %s flow run failed: %s", "crashed" if crashed else "failed", redact(str(error)))


def incident_on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure hook: open (or update) the flow's incident with the state message as evidence; a bot run refused
    because another bot holds the account opens none (that bot is trading: not "bot offline"), nor does a run refused
    for its parameters (an undeclared account: nothing written), nor one that opened its own incident."""
    if getattr(state, "name", None) in (LEASE_HELD_STATE, BAD_INPUT_STATE, INCIDENT_OPENED_STATE):
        _run_logger(flow, flow_run).warning("refused, no incident: %s", getattr(state, "message", ""))
        return
    _open(flow, flow_run, state, crashed=False)


def incident_on_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    """on_crashed hook: open (or update) the flow's incident with the state message as evidence."""
    _open(flow, flow_run, state, crashed=True)


def resolve_on_completion(flow: Any, flow_run: Any, state: Any) -> None:
    """on_completion hook: the flow passes again, so resolve its incident (a message in the incident's thread)."""
    try:
        name = str(getattr(flow, "name", "unknown-flow"))
        with _incident_desk(run_account(flow_run)) as desk:
            resolved = desk.resolve(flow_fingerprint(name))
        if resolved:
            _run_logger(flow, flow_run).info("incident for flow %s resolved", name)
    except Exception as error:
        log.error("resolve hook failed: %s", redact(str(error)))


# The state hooks every runbook flow carries: an incident on failure or crash, resolved on the next success.
RUNBOOK_HOOKS: dict[str, Any] = {
    "on_failure": [incident_on_failure],
    "on_crashed": [incident_on_crashed],
    "on_completion": [resolve_on_completion],
}
