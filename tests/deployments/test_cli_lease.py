"""One active bot per account, through the installed console script: real processes, real SQLite and PostgreSQL
ledgers, the paper exchange; the controls' refusals of --place-order."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deployments.test_cli import PERPS_BOT, perps_bot
from trader.ledger import Ledger

BUY = ("--place-order", "--order-symbol", "BTC-USD", "--order-side", "buy", "--order-quantity", "0.01")
FAST = {"STRATEGY_FAST_WINDOW": "2", "STRATEGY_SLOW_WINDOW": "4", "POSITION_SIZE_USD": "1000"}


def env_for(home: Path, **extra: str) -> dict[str, str]:
    prefixes = ("COINBASE_", "RISK_", "PERPS_", "BROKER", "MARKET_DATA", "DATABASE_URL", "LEASE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update({"STATE_DIR": str(home / "var/state"), "LOG_DIR": str(home / "var/logs"), "METRICS_ENABLED": "0"})
    env.update(FAST)
    env.update(extra)
    return env


class Bots:
    """perps-bot processes started by one test; every one still alive at the end is killed by its pid."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.started: list[subprocess.Popen[str]] = []

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [str(PERPS_BOT), *args],
            cwd=self.home,
            env=env_for(self.home, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.fixture
def bots(tmp_path: Path) -> Iterator[Bots]:
    started = Bots(tmp_path)
    yield started
    started.stop_all()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ledger_at(url: str) -> Ledger:
    return Ledger(url, migrate=False)


def holder_pid(url: str) -> int | None:
    try:
        ledger = ledger_at(url)
    except Exception:  # the database file may not exist yet
        return None
    try:
        lease = ledger.current_lease("default")
        return lease.holder.pid if lease is not None and not lease.expired() else None
    except Exception:  # not migrated yet
        return None
    finally:
        ledger.dispose()


def pause_outside_a_write(pid: int, database: Path) -> None:
    """SIGSTOP a bot between its writes: SQLite has one writer at a time, and a process frozen inside a write
    transaction holds that lock until it runs again, so no other process (the standby included) can write."""
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        probe = sqlite3.connect(database, timeout=0.2, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # frozen mid-write: let it finish and try again
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.01)
        finally:
            probe.close()
    raise AssertionError(f"pid {pid} held the ledger's write lock at each of 100 pauses")


def sqlite_of(home: Path) -> str:
    return f"sqlite:///{home / 'var/state/ledger.db'}"


# --- the controls refuse --place-order ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "control", "clear"),
    [
        ("env", "kill switch", "perps-bot kill-switch off"),
        ("flag-file", "kill switch", "perps-bot kill-switch off"),
        ("reduce-only", "reduce-only", "perps-bot reduce-only off"),
    ],
)
def test_place_order_under_a_control_is_one_line_exit_2_and_nothing_sent_or_written(
    tmp_path: Path, how: str, control: str, clear: str
) -> None:
    env: dict[str, str] = {}
    if how == "env":
        env["RISK_KILL_SWITCH_ENABLED"] = "1"
    elif how == "flag-file":
        (tmp_path / "var/state").mkdir(parents=True)
        (tmp_path / "var/state/KILL_SWITCH").touch()
    else:
        env["RISK_REDUCE_ONLY_MODE"] = "1"

    result = perps_bot(tmp_path, *BUY, **env)

    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and control in result.stderr and clear in result.stderr
    assert "placed" not in result.stdout
    ledger_file = tmp_path / "var/state/ledger.db"
    assert not ledger_file.exists() or Ledger(sqlite_of(tmp_path)).list_orders() == []
    paper = tmp_path / "var/state/paper_exchange.json"
    assert not paper.exists() or json.loads(paper.read_text())["fills"] == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--dev-fast",), "not with --dev-fast"),
        (("--dry-run",), "not with --dry-run"),
        (("cancel-all",), "not with cancel-all"),
        (BUY, "not with the order tooling"),
    ],
    ids=["dev-fast", "dry-run", "cancel-all", "place-order"],
)
def test_standby_outside_a_bot_run_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    result = perps_bot(tmp_path, "--profile", "dev", "--standby", *args)

    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"--standby: {named}" in result.stderr or "--standby: only for the bot" in result.stderr
    assert named.removeprefix("not with ") in result.stderr
    assert not (tmp_path / "var").exists()


def test_a_lease_ttl_below_three_cycles_is_one_line_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    result = perps_bot(tmp_path, "--profile", "dev", "--cycles", "3", LEASE_TTL_SECONDS="1")

    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "LEASE_TTL_SECONDS: must be at least 3 cycle intervals" in result.stderr
    assert not (tmp_path / "var").exists()


# --- one active bot per account -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_bots_started_at_the_same_instant_one_trades_the_other_exits_2_and_writes_nothing(
    bots: Bots, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = sqlite_of(tmp_path) if backend == "sqlite" else str(request.getfixturevalue("fresh_pg_url"))
    Ledger(url).dispose()  # migrated once up front, as `perps-bot up` does (racing migrations are tested apart)
    args = ("--profile", "dev", "--cycles", "40", "--interval", "0.25")

    first, second = bots.start(*args, DATABASE_URL=url), bots.start(*args, DATABASE_URL=url)
    outcomes = [p.wait(timeout=120) for p in (first, second)]

    assert sorted(outcomes) == [0, 2], [p.stderr.read() for p in (first, second)]  # type: ignore[union-attr]
    loser = (first, second)[outcomes.index(2)]
    message = loser.stderr.read().strip()  # type: ignore[union-attr]
    winner = (first, second)[outcomes.index(0)]
    assert len(message.splitlines()) == 1 and f"pid {winner.pid}" in message and "--standby" in message
    ledger = ledger_at(url)
    sessions = ledger.list_sessions()
    assert len(sessions) == 1 and sessions[0].status == "stopped" and sessions[0].cycles == 40
    assert ledger.list_orders(), "the winner traded"
    ledger.dispose()


@pytest.mark.slow
def test_beside_a_running_bot_a_second_bot_and_manual_orders_are_refused_and_cancel_all_makes_it_stand_down(
    bots: Bots, tmp_path: Path
) -> None:
    url = sqlite_of(tmp_path)
    running = bots.start("--profile", "dev", "--interval", "0.25")
    wait_for(lambda: holder_pid(url) == running.pid, 60, "the bot to hold the lease")
    ledger = ledger_at(url)
    wait_for(lambda: ledger.list_orders(), 60, "the bot's first order")
    session = ledger.list_sessions()[-1]

    second = perps_bot(tmp_path, "--profile", "dev", "--cycles", "3", **FAST)
    manual = perps_bot(tmp_path, *BUY)

    for refused in (second, manual):
        assert refused.returncode == 2, refused.stderr
        line = refused.stderr.strip()
        assert len(line.splitlines()) == 1 and f"pid {running.pid}" in line and "s ago" in line
    assert "emergency commands" in manual.stderr
    assert [s.id for s in ledger.list_sessions()] == [session.id]  # nothing written, no recovery of any kind
    assert ledger.get_session(session.id).status == "running"

    cancel = perps_bot(tmp_path, "cancel-all")

    assert cancel.returncode == 0, cancel.stderr
    assert running.wait(timeout=60) == 0  # it stood down by itself before its next order
    ended = ledger.get_session(session.id)
    assert ended.status == "stood_down" and "lease" in (ended.note or "")
    events = [e.event for e in ledger.lease_history("default")]
    assert "override" in events and events.index("override") > events.index("acquired")
    ledger.dispose()


@pytest.mark.slow
def test_a_holder_paused_past_its_ttl_is_replaced_by_the_standby_and_stands_down_when_it_wakes(
    bots: Bots, tmp_path: Path
) -> None:
    url = sqlite_of(tmp_path)
    timing = {"LEASE_TTL_SECONDS": "3", "CYCLE_INTERVAL_SECONDS": "0.5"}
    holder = bots.start("--profile", "dev", **timing)
    wait_for(lambda: holder_pid(url) == holder.pid, 60, "the first bot to hold the lease")
    standby = bots.start("--profile", "dev", "--standby", **timing)
    ledger = ledger_at(url)
    wait_for(lambda: ledger.list_orders(), 60, "the holder's first order")
    log = tmp_path / "var/logs/perps_bot.log"
    wait_for(lambda: "standby:" in log.read_text(), 60, "the standby to be waiting for the lease")
    assert holder_pid(url) == holder.pid and standby.poll() is None
    old_session = ledger.list_sessions()[-1].id
    last_before_pause = max(o.id or 0 for o in ledger.list_orders())

    pause_outside_a_write(holder.pid, tmp_path / "var/state/ledger.db")
    paused = time.monotonic()
    wait_for(lambda: holder_pid(url) == standby.pid, 3 + 5 + 5, "the standby to take over")
    takeover = time.monotonic() - paused
    os.kill(holder.pid, signal.SIGCONT)

    assert holder.wait(timeout=60) == 0, holder.stderr.read()  # type: ignore[union-attr]
    assert takeover <= 3 + 5
    sessions = {s.id: s for s in ledger.list_sessions()}
    assert sessions[old_session].status in ("stood_down", "recovered")
    new_session = next(s for s in sessions.values() if s.status == "running")
    late = [o.client_order_id for o in ledger.list_orders(old_session) if (o.id or 0) > last_before_pause]
    assert late == [], "the woken bot recorded (and so may have sent) orders after it lost the account"
    assert new_session.id != old_session
    wait_for(lambda: ledger.list_orders(new_session.id), 60, "the standby to trade")
    assert "standing down" in log.read_text()
    ledger.dispose()
