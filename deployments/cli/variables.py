"""The switches' Prefect Variables as the CLI sees them: written by the emergency commands, read by status and the
order tooling, only when PREFECT_API_URL is set, and never fatal: an unreachable API is said in one line and the
flag files and the environment decide."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from deployments.cli.output import say
from trader.settings import Settings

if TYPE_CHECKING:
    from trader.emergency.procedures import Switch, SwitchChange
    from trader.risk import RiskControls


def write_variable(switch: Switch, enabled: bool) -> tuple[SwitchChange | None, str | None]:
    """The Prefect Variable when PREFECT_API_URL is set and answers; else (None, why not)."""
    if not os.environ.get("PREFECT_API_URL"):
        return None, "PREFECT_API_URL is not set (only a bot reading this STATE_DIR sees the flag file)"
    from prefect_adapter.variables import VariablesUnavailable, set_switch_variable

    try:
        return set_switch_variable(switch, enabled, api_url=os.environ["PREFECT_API_URL"]), None
    except VariablesUnavailable as error:
        return None, f"unreachable ({error})"


def read_variable(switch: Switch) -> str:
    """The Variable's value as the status table shows it: ON, OFF, or why it was not read."""
    if not os.environ.get("PREFECT_API_URL"):
        return "not read: PREFECT_API_URL is not set"
    from prefect_adapter.variables import SwitchVariables, VariablesUnavailable, parse_switch

    variables = SwitchVariables(api_url=os.environ["PREFECT_API_URL"])
    try:
        value = variables.read()[switch]
    except VariablesUnavailable as error:
        return f"unreadable: {error}"
    finally:
        variables.close()
    if value is None:
        return "OFF (not set)"
    parsed = parse_switch(value)
    return f"ON ({value!r} is not true/false)" if parsed is None else "ON" if parsed else "OFF"


def current_controls(settings: Settings) -> RiskControls:
    """The switches as a bot would see them: environment, flag files, and the Prefect Variables when PREFECT_API_URL
    answers (a switch set from the UI or by an emergency flow on another machine counts here too)."""
    from trader.bot import read_controls
    from trader.risk import RiskControls

    local = read_controls(settings)
    if not os.environ.get("PREFECT_API_URL"):
        return local
    from prefect_adapter.variables import SwitchVariables, VariablesUnavailable, switch_is_on

    variables = SwitchVariables(api_url=os.environ["PREFECT_API_URL"])
    try:
        raw = variables.read()
    except VariablesUnavailable as error:
        say(f"[yellow]Prefect Variables not read ({error}): the environment and flag files decide[/]")
        return local
    finally:
        variables.close()

    return RiskControls(
        local.kill_switch or switch_is_on(raw["kill_switch"]), local.reduce_only or switch_is_on(raw["reduce_only"])
    )
