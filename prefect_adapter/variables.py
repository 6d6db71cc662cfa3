"""The kill switch and reduce-only as Prefect Variables `kill_switch` and `reduce_only`: read, written, parsed.

An operator flips them in the UI (Variables page: true/false; "1"/"0", "on"/"off", "yes"/"no" typed by hand are
understood too) or through the emergency deployments and `perps-bot kill-switch on`. A value that is not a
recognisable true/false counts as ON (prefect_adapter/controls.py). Every call here fails fast: one kept-open client,
a short timeout, no client retries, any error raised as VariablesUnavailable.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES

from trader.emergency.procedures import SWITCHES, Switch, SwitchChange

VARIABLES: dict[Switch, str] = {"kill_switch": "kill_switch", "reduce_only": "reduce_only"}
TIMEOUT_SECONDS = 3.0
_TRUE = {"1", "true", "on", "yes", "enabled"}
_FALSE = {"0", "false", "off", "no", "disabled", ""}


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


def switch_is_on(value: object) -> bool:
    """A switch Variable's value as the bot applies it: unset is off, true/false as given, anything else is ON
    (fail safe: a value typed wrong never turns a switch off)."""
    return value is not None and parse_switch(value) is not False


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


def set_switch_variable(switch: Switch, enabled: bool, *, api_url: str | None = None) -> SwitchChange:
    """Set the switch's Variable (every bot reads it each cycle, wherever it runs); raises VariablesUnavailable."""
    variables = SwitchVariables(api_url=api_url)
    try:
        before = variables.write(switch, enabled)
    finally:
        variables.close()
    was = False if before is None else parse_switch(before)
    return SwitchChange(switch, f"Prefect Variable {VARIABLES[switch]}", was, enabled)


def read_switch_values(client: SyncPrefectClient) -> dict[Switch, object]:
    """The raw value of each switch Variable (None when it does not exist), in one request: every running bot
    polls this, so with many bots each request saved is one per bot per poll on the server."""
    names = [VARIABLES[s] for s in SWITCHES]
    response = client.request(
        "POST", "/variables/filter", json={"variables": {"name": {"any_": names}}, "limit": len(names)}
    )
    values = {row["name"]: row.get("value") for row in response.json()}
    return {s: values.get(VARIABLES[s]) for s in SWITCHES}
