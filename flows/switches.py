"""The kill switch and reduce-only as Prefect Variables `kill_switch` and `reduce_only`, applied every bot cycle.

An operator flips them in the UI (Variables page: true/false; "1"/"0", "on"/"off", "yes"/"no" typed by hand are
understood too) or through the emergency deployments and `perps-bot kill-switch on`. The bot's controls are
RISK_KILL_SWITCH_ENABLED / RISK_REDUCE_ONLY_MODE, the STATE_DIR flag files (trader.bot.read_controls) OR the
Variables: any one of them on turns the switch on.

Fail safe: a cycle never calls the Prefect API. The orchestrator poller (flows/orchestrator.py) reads the Variables
in the background (short timeout, no client retries) and BotControls applies its last reading every cycle. While the
API cannot be read, the last values read are kept (a switch is never turned off by an outage) and one warning is
logged per outage; a change made meanwhile applies at the first reading that succeeds. A value that is not a
recognisable true/false counts as ON. The env and the flag files are read every cycle, whatever the API does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES

from trader.bot import read_controls
from trader.risk import RiskControls
from trader.risk.emergency import SWITCHES, Switch, local_switches
from trader.settings import Settings

log = logging.getLogger("perps_bot.switches")

VARIABLES: dict[Switch, str] = {"kill_switch": "kill_switch", "reduce_only": "reduce_only"}
LABELS: dict[Switch, str] = {"kill_switch": "kill switch", "reduce_only": "reduce-only"}
TIMEOUT_SECONDS = 3.0
_TRUE = {"1", "true", "on", "yes", "enabled"}
_FALSE = {"0", "false", "off", "no", "disabled", ""}


class Logger(Protocol):
    """Where BotControls reports a switch change or an outage to the run (a logger, or the poller's bounded RunLog)."""

    def warning(self, msg: str, *args: object) -> None: ...


@dataclass(frozen=True)
class VariableReading:
    """The Variables as last read in the background: raw values (None: not read yet), why the latest read failed."""

    values: dict[Switch, object] | None
    error: str | None = None


class VariablesUnavailable(Exception):
    """The Prefect API could not be read or written (not configured, unreachable, or an error answer)."""


def parse_switch(value: object) -> bool | None:
    """True/False for a JSON boolean, 1/0 or a true/false, on/off, yes/no string; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value) if value in (0, 1) else None
    if isinstance(value, str):
        text = value.strip().strip('"').lower()
        return True if text in _TRUE else False if text in _FALSE else None
    return None


class SwitchVariables:
    """Reads and writes the two Variables through one kept-open client: a short timeout, no retries (fail fast)."""

    def __init__(self, timeout_seconds: float = TIMEOUT_SECONDS, *, api_url: str | None = None) -> None:
        """api_url: the API to use (the CLI passes $PREFECT_API_URL); default: the current Prefect settings'."""
        self.timeout_seconds = timeout_seconds
        current = get_settings_context()
        self.api_url: str | None = api_url or PREFECT_API_URL.value()
        updates: dict[Any, Any] = {PREFECT_CLIENT_MAX_RETRIES: 0}
        if api_url:
            updates[PREFECT_API_URL] = api_url
        # A settings context with client retries off, built once: the client reads it at request time.
        self._context = (current.profile, current.settings.copy_with_update(updates=updates))
        self._client: SyncPrefectClient | None = None

    def read(self) -> dict[Switch, object]:
        """The raw value of each Variable (None when it does not exist); raises VariablesUnavailable."""
        return self.call(read_switch_values)

    def write(self, switch: Switch, enabled: bool) -> object:
        """Set the Variable to true/false (creating it); returns its raw value before. Raises VariablesUnavailable."""
        name = VARIABLES[switch]

        def write(client: SyncPrefectClient) -> object:
            before = client.read_variable_by_name(name)
            if before is None:
                client.create_variable(VariableCreate(name=name, value=enabled, tags=["emergency"]))
                return None
            client.update_variable(VariableUpdate(name=name, value=enabled))
            return before.value

        return self.call(write)

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with suppress(Exception):  # closing a broken connection must not hide the error that got us here
                client.__exit__(None, None, None)

    def call(self, action: Callable[[SyncPrefectClient], Any]) -> Any:
        """action(client) with the kept-open fail-fast client; raises VariablesUnavailable on any error."""
        if not self.api_url:
            raise VariablesUnavailable("PREFECT_API_URL is not set")
        profile, settings = self._context
        try:
            with SettingsContext(profile=profile, settings=settings):
                if self._client is None:
                    client = get_client(
                        httpx_settings={
                            "timeout": self.timeout_seconds,
                            "transport": httpx.HTTPTransport(retries=0),
                        },
                        sync_client=True,
                    )
                    self._client = client.__enter__()
                return action(self._client)
        except Exception as error:
            self.close()  # the next attempt opens a fresh connection
            raise VariablesUnavailable(f"Prefect API at {self.api_url}: {type(error).__name__}: {error}") from error


def read_switch_values(client: SyncPrefectClient) -> dict[Switch, object]:
    """The raw value of each switch Variable (None when it does not exist)."""
    return {s: _value(client, VARIABLES[s]) for s in SWITCHES}


def _value(client: SyncPrefectClient, name: str) -> object:
    variable = client.read_variable_by_name(name)
    return None if variable is None else variable.value


class BotControls:
    """The trading bot's controls, called every cycle: environment and flag files OR the Variables' last reading."""

    def __init__(
        self, settings: Settings, variables: Callable[[], VariableReading], *, logger: Logger | None = None
    ) -> None:
        """variables: the orchestrator poller's last reading (OrchestratorPoller.variables); never a network call."""
        self.settings = settings
        self.variables = variables
        self.logger: Logger = logger or log
        self.from_variables: dict[Switch, bool] = dict.fromkeys(SWITCHES, False)  # the last values read
        self.api_down = False
        self._warned_values: dict[Switch, object] = {}
        self._current: dict[Switch, bool] = dict.fromkeys(SWITCHES, False)

    def __call__(self) -> RiskControls:
        local = read_controls(self.settings)
        self._apply(self.variables())
        controls = RiskControls(
            kill_switch=local.kill_switch or self.from_variables["kill_switch"],
            reduce_only=local.reduce_only or self.from_variables["reduce_only"],
        )
        self._log_changes(controls)
        return controls

    def _warn(self, message: str, *args: object) -> None:
        """To perps_bot.log (the file the checklist scans) and, in a flow run, to the run's log in the UI."""
        log.warning(message, *args)
        if self.logger is not log:
            self.logger.warning(message, *args)

    def _apply(self, reading: VariableReading) -> None:
        if reading.error is not None and not self.api_down:
            self.api_down = True
            kept = ", ".join(f"{s}={'ON' if v else 'OFF'}" for s, v in self.from_variables.items())
            self._warn(
                "Prefect Variables unreadable (%s): keeping the last values (%s) until the API answers again",
                reading.error,
                kept,
            )
        elif reading.error is None and self.api_down:
            self.api_down = False
            self._warn("Prefect Variables readable again")
        if reading.values is not None:  # the last successful reading, kept through an outage
            for switch, value in reading.values.items():
                self.from_variables[switch] = self._parse(switch, value)

    def _parse(self, switch: Switch, value: object) -> bool:
        if value is None:  # not created (or deleted in the UI): off
            return False
        parsed = parse_switch(value)
        if parsed is not None:
            self._warned_values.pop(switch, None)
            return parsed
        if self._warned_values.get(switch) != value:
            self._warned_values[switch] = value
            self._warn(
                "Prefect Variable %s is %r, not true or false: treated as ON (set it to true or false)",
                VARIABLES[switch],
                value,
            )
        return True

    def _log_changes(self, controls: RiskControls) -> None:
        now: dict[Switch, bool] = {"kill_switch": controls.kill_switch, "reduce_only": controls.reduce_only}
        for switch in SWITCHES:
            if now[switch] == self._current[switch]:
                continue
            self._current[switch] = now[switch]
            label = LABELS[switch]
            if now[switch]:
                self._warn("%s ON (%s)", label, ", ".join(self.sources(switch)))
            else:
                self._warn("%s OFF", label)

    def sources(self, switch: Switch) -> list[str]:
        """Where the switch is on: the environment variable, the flag file, the Prefect Variable."""
        found = local_switches(self.settings)[switch]
        if self.from_variables[switch]:
            found.append(f"Prefect Variable {VARIABLES[switch]}")
        return found


def bot_controls(
    settings: Settings, variables: Callable[[], VariableReading], logger: Logger | None = None
) -> BotControls:
    """The controls callable the trading-bot flow gives its TradingBot (bot.controls)."""
    return BotControls(settings, variables, logger=logger)
