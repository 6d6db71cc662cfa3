"""`perps-bot up` with two declared paper accounts, against real processes: served (one runner) and as the
production layout (`--workers 2`: the server on a PostgreSQL database beside the ledger, the gpt-trader pool,
`prefect deploy`, two Prefect workers). Each account's bot trades (its own ledger rows), status has a line per
account's bot (and per worker), and SIGTERM leaves no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from deployments.embedded import descendants
from deployments.workers import worker_healthy
from tests.deployments.test_up_supervisor import free_port, port_free, start_time
from tests.paper_accounts import paper_accounts_yaml
from tests.processes import wait_for
from trader.ledger import Ledger
from trader.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PERPS_BOT = Path(sys.executable).parent / "perps-bot"
ACCOUNTS = ("alpha", "beta")
ACCOUNTS_YAML = paper_accounts_yaml(ACCOUNTS)
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def up_env(folder: Path, **extra: str) -> dict[str, str]:
    """The test's environment without Prefect or bot settings of its own; two paper accounts that trade often."""
    own = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k not in own}
    env.update(
        {
            "ACCOUNTS_FILE": str(folder / "accounts.yaml"),
            "BROKER": "simulated",
            "METRICS_ENABLED": "1",
            "METRICS_PORT": str(free_port()),  # alpha on it, beta on the next (trader/accounts.py own_files)
            "HEARTBEAT_INTERVAL_SECONDS": "0.2",
            "STRATEGY_FAST_WINDOW": "2",
            "STRATEGY_SLOW_WINDOW": "4",
            "POSITION_SIZE_USD": "1000",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": str(ROOT),
            **extra,
        }
    )
    return env


class Up:
    """One `perps-bot up` in its own folder and session, stopped (and every process of it killed) at teardown."""

    def __init__(self, folder: Path, env: dict[str, str], *args: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "accounts.yaml").write_text(ACCOUNTS_YAML)
        self.folder, self.env, self.port = folder, env, free_port()
        self.output = folder / "up.out"
        with self.output.open("wb") as sink:
            self.process = subprocess.Popen(
                [str(PERPS_BOT), "up", "--port", str(self.port), *args],
                cwd=folder,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.seen: dict[int, int | None] = {}

    def remember(self) -> dict[int, int | None]:
        """Every process below `up` now (pid -> start time), added to what teardown kills if the test fails."""
        found = {pid: start_time(pid) for pid in [self.process.pid, *descendants(self.process.pid)]}
        self.seen.update(found)
        return found

    def log(self) -> str:
        up_log = self.folder / "var" / "logs" / "up.log"
        return self.output.read_text()[-3000:] + (up_log.read_text()[-2000:] if up_log.exists() else "")

    def status(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PERPS_BOT), "status"], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=90
        )

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=90)

    def teardown(self) -> None:
        if self.process.poll() is None:
            self.remember()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()
        for pid, ticks in self.seen.items():
            if ticks is not None and start_time(pid) == ticks:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def fills(url: str, account: str) -> int:
    """The account's fills in the ledger (0 before it exists)."""
    try:
        ledger = Ledger(url, account=account, migrate=False)
    except Exception:
        return 0
    try:
        return len(ledger.list_fills())
    except Exception:
        return 0
    finally:
        ledger.dispose()


def lease_holder_pid(url: str, account: str) -> int | None:
    """The pid of the process holding the account's lease (its bot), or None."""
    ledger = Ledger(url, account=account, migrate=False)
    try:
        lease = ledger.current_lease(account)
        return lease.holder.pid if lease is not None else None
    finally:
        ledger.dispose()


def both_trade(up: Up, url: str) -> Callable[[], Any]:
    return lambda: up.process.poll() is not None or all(fills(url, account) >= 1 for account in ACCOUNTS)


def status_lines(result: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        lines.setdefault(line.split()[0], []).append(line)
    return lines


def assert_stops_clean(up: Up) -> None:
    started = up.remember()
    assert len(started) >= 5, f"up, server, runner or workers and two bots expected, found {started}"

    code = up.stop()

    assert code == 0, up.log()
    left = [pid for pid, ticks in started.items() if ticks is not None and start_time(pid) == ticks]
    assert left == [], f"left running: {left}"
    assert port_free(up.port)
    assert not (up.folder / "var" / "prefect" / "up.json").exists()


def test_up_with_two_accounts_serves_and_trades_both_and_status_lists_each(tmp_path: Path) -> None:
    up = Up(tmp_path, up_env(tmp_path))
    ledger_url = f"sqlite:///{tmp_path / 'var' / 'state' / 'ledger.db'}"
    try:
        wait_for(both_trade(up, ledger_url), timeout=300, what="both accounts' bots fill an order", interval=1)
        assert up.process.poll() is None, up.log()

        result = up.status()

        lines = status_lines(result)
        assert result.returncode == 0, result.stdout + result.stderr
        assert [lines[f"bot:{name}"][0].split()[1] for name in ACCOUNTS] == ["OK", "OK"], result.stdout
        assert "trading-bot/alpha" not in lines["bot:beta"][0]
        for name in ACCOUNTS:
            assert f"account {name}:" in lines[f"bot:{name}"][0] and "Running" in lines[f"bot:{name}"][0]
            assert (tmp_path / "var" / "state" / "accounts" / name / "heartbeat.json").exists()
        assert "2 bot deployments" in lines["runner"][0]
        assert_stops_clean(up)
        for name in ACCOUNTS:
            ledger = Ledger(ledger_url, account=name, migrate=False)
            try:
                assert ledger.list_sessions()[-1].status == "stopped"
            finally:
                ledger.dispose()
    finally:
        up.teardown()


@pytest.fixture
def scratch_ledger() -> Iterator[str]:
    """A fresh PostgreSQL ledger database on the test server; it and the `<name>_prefect` database `up` creates
    beside it are dropped afterwards."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"ledger_up_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            for database in (name, f"{name}_prefect"):
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,)
                )
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}"')
        admin.dispose()


def prefect_database_exists(ledger_url: str) -> bool:
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            name = f"{make_url(ledger_url).database}_prefect"
            found = connection.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).first()
            return found is not None
    finally:
        admin.dispose()


def test_up_with_two_workers_runs_the_production_layout_and_both_accounts_trade(
    tmp_path: Path, scratch_ledger: str
) -> None:
    up = Up(tmp_path, up_env(tmp_path, DATABASE_URL=scratch_ledger), "--workers", "2")
    try:
        wait_for(both_trade(up, scratch_ledger), timeout=420, what="both accounts' bots fill an order", interval=1)
        assert up.process.poll() is None, up.log()

        record = json.loads((tmp_path / "var" / "prefect" / "up.json").read_text())

        workers = record["workers"]
        assert [w["name"].rsplit("-", 1)[1] for w in workers] == ["w1", "w2"]
        assert all(worker_healthy(w["health_port"]) for w in workers)
        assert record["prefect_database"] == "postgresql" and prefect_database_exists(scratch_ledger)
        assert sorted(record["bots"]) == ["trading-bot/alpha", "trading-bot/beta"]
        for name, folder in (("w1", "w1"), ("w2", "w2")):
            assert (tmp_path / "var" / "workers" / folder / "worker.log").exists(), name
        # each bot is a fork of its worker's fork server (deployments/forkserver.py), not a fresh interpreter
        forks = {pid for w in workers for pid in descendants(w["fork_server_pid"])}
        holders = {lease_holder_pid(scratch_ledger, account) for account in ACCOUNTS}
        assert holders <= forks, (holders, forks)
        result = up.status()
        lines = status_lines(result)
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(lines["worker"]) == 2 and all(" OK " in line for line in lines["worker"]), result.stdout
        assert all(lines[f"bot:{name}"][0].split()[1] == "OK" for name in ACCOUNTS), result.stdout
        assert "runner" not in lines
        assert_stops_clean(up)
    finally:
        up.teardown()
