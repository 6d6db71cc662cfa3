"""From an empty folder, as a newcomer does: `perps-bot up`, then at once the morning checklist from Prefect's CLI.

The two race to migrate the one new SQLite ledger in var/state (it failed with "table trading_sessions already
exists" before migrations took a lock), and the checklist on a healthy paper bot must show no FAIL item.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.flows.conftest import free_port
from trader.ledger import Ledger
from trader.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent
UP_READY = "trading-bot/paper running"  # what `perps-bot up` prints once the bot's flow run has been started
UP_START_TIMEOUT = 240.0
UP_STOP_TIMEOUT = 60.0


def fresh_env() -> dict[str, str]:
    """This process's environment minus every bot setting and every Prefect setting: what a new shell has."""
    settings = {name.upper() for name in Settings.model_fields} | {"PERPS_PROFILE"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in settings and not k.startswith("PREFECT_")}
    env.update(
        {
            "METRICS_ENABLED": "0",  # the operator's 9102 stays free
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "COLUMNS": "250",  # rich wraps at 80 columns when stdout is a pipe
        }
    )
    return env


@dataclass
class Up:
    """A running `perps-bot up` and the lines it printed so far (read by a thread)."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None:
                pytest.fail(f"perps-bot up exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"perps-bot up did not print {text!r} within {timeout:.0f} s:\n{self.output()[-3000:]}")
            time.sleep(0.2)


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, from /proc; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of root: pid -> start time (so a reused pid is never mistaken for ours)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[1]
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = started[pid]
        todo += children.get(pid, [])
    return found


def stop_up(up: Up) -> None:
    """SIGTERM, as a supervisor sends it; SIGINT to its group, then SIGKILL, only if it outlives the grace period.
    Whatever it started and left behind is killed by pid."""
    process = up.process
    tree = descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=UP_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for pid, started in tree.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == started:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def up_in_empty_folder(tmp_path: Path) -> Iterator[tuple[Up, Path, int]]:
    """`perps-bot up --port <free>` started in an empty folder; stopped with SIGTERM afterwards."""
    folder = tmp_path / "newcomer"
    folder.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "perps-bot"), "up", "--port", str(port)],
        cwd=folder,
        env=fresh_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    up = Up(process)
    reader = threading.Thread(target=up.read, daemon=True)
    reader.start()
    try:
        yield up, folder, port
    finally:
        stop_up(up)
        reader.join(timeout=5)
        print(up.output()[-3000:])  # shown by pytest when the test fails


def run_daily_checklist(folder: Path, port: int) -> str:
    """`prefect deployment run 'daily-checklist/daily' --watch` against up's server; returns the flow run id."""
    env = fresh_env() | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(folder / "var/prefect")}
    checklist = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "daily-checklist/daily", "--watch", "--watch-interval", "1"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    watched = checklist.stdout + checklist.stderr
    assert checklist.returncode == 0, watched[-3000:]
    assert "finished successfully in 'Completed'" in watched, watched[-3000:]
    return next(line.split("UUID:")[1].strip() for line in checklist.stdout.splitlines() if "UUID:" in line)


def stored_results(folder: Path) -> list[tuple[str | None, dict[str, dict[str, str]]]]:
    """The daily checklist runs in the ledger, newest first: (flow run id, {item: row})."""
    ledger = Ledger(f"sqlite:///{(folder / 'var/state/ledger.db').as_posix()}", migrate=False)
    try:
        runs = ledger.checklist_runs("daily")
    finally:
        ledger.dispose()
    return [(run.flow_run_id, {row["item"]: row for row in json.loads(run.results_json)}) for run in runs]


def wait_for_cycles(folder: Path, cycles: int, timeout: float) -> None:
    """Until the bot's heartbeat file reports this many cycles."""
    beat = folder / "var/state/heartbeat.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(beat.read_text())["cycles"] >= cycles:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the bot did not reach {cycles} cycles within {timeout:.0f} s ({beat})")


def failed_items(items: dict[str, dict[str, str]]) -> dict[str, str]:
    return {item: row["evidence"] for item, row in items.items() if row["status"] == "fail"}


def test_fresh_folder_up_then_daily_checklist_at_once_completes_and_is_never_fail_on_the_healthy_bot(
    up_in_empty_folder: tuple[Up, Path, int],
) -> None:
    up, folder, port = up_in_empty_folder
    up.wait_for(UP_READY, UP_START_TIMEOUT)

    # At once: the checklist flow and the bot's flow both migrate the new ledger.
    first = run_daily_checklist(folder, port)
    wait_for_cycles(folder, 3, timeout=120)
    second = run_daily_checklist(folder, port)  # the bot is trading now: its heartbeats are seconds old

    runs = stored_results(folder)
    assert [run_id for run_id, _ in runs] == [second, first]
    for _, items in runs:
        assert len(items) == 11  # the morning checklist's items (tests/flows/test_daily_checklist.py ITEMS)
        assert failed_items(items) == {}
    latest = runs[0][1]
    assert latest["telemetry freshness"]["status"] == "pass", latest["telemetry freshness"]
    assert "market time" in latest["telemetry freshness"]["evidence"]
    assert latest["heartbeat metrics"]["status"] == "pass", latest["heartbeat metrics"]
