"""The trading bot's controls, called every cycle: environment and flag files OR the Prefect Variables' last reading.

The bot's controls are RISK_KILL_SWITCH_ENABLED / RISK_REDUCE_ONLY_MODE, the STATE_DIR flag files
(trader.bot.read_controls) OR the Variables: any one of them on turns the switch on.

Fail safe: a cycle never calls the Prefect API. The orchestrator poller (prefect_adapter/orchestrator.py) reads the
Variables in the background (short timeout, no client retries) and BotControls applies its last reading every cycle.
While the API cannot be read, the last values read are kept (a switch is never turned off by an outage) and one
warning is logged per outage; a change made meanwhile applies at the first reading that succeeds. A value that is not
a recognisable true/false counts as ON. The env and the flag files are read every cycle, whatever the API does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from prefect_adapter.variables import VARIABLES, VariableReading, parse_switch
from trader.bot import read_controls
from trader.emergency.procedures import SWITCHES, Switch, local_switches
from trader.risk import RiskControls
from trader.settings import Settings

log = logging.getLogger(__name__)

LABELS: dict[Switch, str] = {"kill_switch": "kill switch", "reduce_only": "reduce-only"}


class Logger(Protocol):
    """Where BotControls reports a switch change or an outage to the run (a logger, or the poller's bounded RunLog)."""

    def warning(self, msg: str, *args: object) -> None: ...


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
