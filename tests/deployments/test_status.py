"""perps-bot status without a Prefect server: the verdicts it draws from the bot's own records (a real SQLite ledger
with a real lease, the heartbeat file) and the exit codes 1 (degraded) and 2 (nothing reachable)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deployments.status import Line, collect, exit_code
from trader.ledger import Ledger
from trader.ledger.lease import Holder
from trader.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
PERPS_BOT = Path(sys.executable).parent / "perps-bot"


def dead_api_url() -> str:
    """An API URL on a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A paper bot's settings whose state folder and SQLite ledger live in tmp_path (status runs in tmp_path)."""
    return load_settings(profile="dev", state_dir=tmp_path / "var" / "state", heartbeat_interval_seconds=0.2)


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(settings.database_url)
    yield ledger
    ledger.dispose()


def write_heartbeat(settings: Settings, age: float, trading_state: str = "trading", **guards: str) -> None:
    levels = {"daily_loss": "ok", "error_rate": "ok", **guards}
    record = {
        "cycles": 42,
        "market_time": "2025-09-18T01:47:00+00:00",
        "wall_time": time.time() - age,
        "trading_state": trading_state,
        "guards": {name: {"level": level, "value": 0.0, "action": "halt"} for name, level in levels.items()},
    }
    (settings.state_dir / "heartbeat.json").write_text(json.dumps(record))


def by_part(lines: list[Line]) -> dict[str, Line]:
    return {line.part: line for line in lines}


def test_a_cycling_bot_whose_server_is_down_is_degraded(settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    ledger.acquire_lease(settings.account, Holder.this_process("bot"), ttl_seconds=30)
    write_heartbeat(settings, age=0.5)

    lines, probe = collect(settings, tmp_path, dead_api_url())

    parts = by_part(lines)
    assert [line.part for line in lines] == ["server", "runner", "bot run", "lease", "cycle", "guards", "incidents"]
    assert parts["server"].level == "DOWN"
    assert parts["lease"].level == "OK" and f"pid {os.getpid()}" in parts["lease"].text
    assert parts["cycle"].level == "OK" and "cycle 42" in parts["cycle"].text
    assert parts["guards"].level == "OK" and parts["incidents"].level == "OK"
    assert exit_code(lines, probe) == 1


def test_a_stale_heartbeat_and_an_expired_lease_with_no_server_is_nothing_reachable(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    info = ledger.acquire_lease(settings.account, Holder.this_process("bot"), ttl_seconds=0.2)
    deadline = time.monotonic() + 10
    while not info.expired() and time.monotonic() < deadline:
        time.sleep(0.05)
    write_heartbeat(settings, age=600)

    lines, probe = collect(settings, tmp_path, dead_api_url())

    parts = by_part(lines)
    assert parts["lease"].level == "WARN" and parts["lease"].text.startswith("expired")
    assert parts["cycle"].level == "DOWN" and "not cycling" in parts["cycle"].text
    assert exit_code(lines, probe) == 2


def test_raised_guards_and_open_incidents_are_named(settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    ledger.acquire_lease(settings.account, Holder.this_process("bot"), ttl_seconds=30)
    write_heartbeat(settings, age=0.5, trading_state="reduce_only", daily_loss="critical")
    ledger.open_incident("guard:daily_loss", "SEV-1", "daily loss 2.4% over the limit", "", "bot", datetime.now(UTC))

    lines, _probe = collect(settings, tmp_path, dead_api_url())

    parts = by_part(lines)
    assert parts["guards"].level == "WARN"
    assert "reduce_only" in parts["guards"].text and "daily_loss critical" in parts["guards"].text
    assert parts["incidents"].level == "WARN"
    assert "1 open" in parts["incidents"].text and "SEV-1 daily loss 2.4% over the limit" in parts["incidents"].text


def test_status_in_an_empty_folder_with_no_server_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_API_URL": dead_api_url(), "PYTHONPATH": str(ROOT)})
    for name in ("DATABASE_URL", "STATE_DIR", "LOG_DIR"):
        env.pop(name, None)
    started = time.monotonic()

    result = subprocess.run(
        [str(PERPS_BOT), "status"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["server", "DOWN"] and "Connection refused" in lines[0]
    assert len(lines) == 7
    assert time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []


def test_status_with_an_argument_is_refused_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_API_URL"] = dead_api_url()

    result = subprocess.run(
        [str(PERPS_BOT), "status", "server"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["perps-bot: error: status: takes no argument (got 'server')"]
    assert result.stdout == "" and list(tmp_path.iterdir()) == []
