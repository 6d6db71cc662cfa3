"""The operator's stop request: STATE_DIR/STOP, written by the graceful shutdown's last step.

Invariant: a request stops only the bots that were already running when it was made. A bot (`perps-bot run`, a
`--standby` waiting for the lease, a trading-bot flow run on this machine) checks it between cycles and in the sleep
between them, and stops there: `perps-bot run` exits 0, the trading-bot run ends Cancelled, which supervision never
restarts (trader/supervision.py). A bot started after the request ignores it, so the file stays as the record of
the shutdown and never stops the next deliberate start; nothing needs to clear it.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from trader.fsio import atomic_write
from trader.settings import Settings

STOP_FILE = "STOP"


def stop_file(settings: Settings) -> Path:
    """STATE_DIR/STOP of the settings' account (a declared account's own STATE_DIR)."""
    return settings.state_dir / STOP_FILE


def request_stop(settings: Settings, reason: str) -> Path:
    """Write the stop request (its time and reason); every bot of the account running on this machine now stops
    between cycles."""
    path = stop_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, f"stop requested at {datetime.now(UTC).isoformat()} by pid {os.getpid()}: {reason}\n")
    return path


def stop_requested(settings: Settings, since: float) -> str | None:
    """Why to stop, when a request was made at or after `since` (wall-clock seconds: when this bot started); None
    without one, or when it is older than this bot."""
    path = stop_file(settings)
    try:
        made = path.stat().st_mtime
        if made < since:
            return None
        line = path.read_text(encoding="utf-8").strip().splitlines()[0]
    except (OSError, IndexError):
        return None
    return f"operator stop ({path}: {line})"


class StopRequest:
    """A bot's check of the stop request, made since the bot started: its reason once seen, else None."""

    def __init__(self, settings: Settings, since: float | None = None) -> None:
        self.settings = settings
        self.since = time.time() if since is None else since
        self.reason: str | None = None

    def __call__(self) -> str | None:
        if self.reason is None:
            self.reason = stop_requested(self.settings, self.since)
        return self.reason
