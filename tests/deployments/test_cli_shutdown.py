"""perps-bot shutdown: the perpetuals runbook's graceful shutdown against real processes (a paper bot trading, the
console script), the paper exchange and a PostgreSQL ledger; the operator's stop request; bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from deployments.cli import main
from tests.deployments.test_cli import PERPS_BOT
from tests.paper_accounts import paper_accounts_yaml
from tests.processes import wait_for
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderStatus, OrderType, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.settings import load_settings
from trader.shutdown.stop import request_stop

BTC = "BTC-USD"
# The 7/79 crossover buys on its first cycle of the replay and holds for two minutes of bars: a bot with a position.
HOLDS = {"STRATEGY_FAST_WINDOW": "7", "STRATEGY_SLOW_WINDOW": "79", "POSITION_SIZE_USD": "1000"}


def env_for(home: Path, database_url: str, **extra: str) -> dict[str, str]:
    """A paper bot's environment in `home`: its own state, logs and ledger; none of the machine's keys or switches."""
    prefixes = ("COINBASE_", "RISK_", "PERPS_", "BROKER", "MARKET_DATA", "DATABASE_URL", "LEASE_", "PREFECT_API")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in ("ACCOUNT", "ACCOUNTS_FILE")}
    env.update(
        {
            "STATE_DIR": str(home / "var/state"),
            "LOG_DIR": str(home / "var/logs"),
            "DATABASE_URL": database_url,
            "BROKER": "simulated",
            "METRICS_ENABLED": "0",
            "HEARTBEAT_INTERVAL_SECONDS": "0.2",
            **HOLDS,
            **extra,
        }
    )
    return env


class Processes:
    """perps-bot processes started by one test; any still alive at the end is killed by its pid."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, home: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [str(PERPS_BOT), *args], cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    yield started
    started.stop_all()


@pytest.fixture
def home(tmp_path: Path, fresh_pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's environment as env_for's (for main() in-process); the ledger on its own PostgreSQL database."""
    for name in list(os.environ):
        if name.startswith(("COINBASE_", "RISK_", "PERPS_", "MARKET_DATA", "LEASE_", "PREFECT_API")):
            monkeypatch.delenv(name)
    for name in ("ACCOUNT", "ACCOUNTS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env_for(tmp_path, fresh_pg_url).items():
        if name in ("STATE_DIR", "LOG_DIR", "DATABASE_URL", "BROKER", "METRICS_ENABLED"):
            monkeypatch.setenv(name, value)
    Ledger(fresh_pg_url).dispose()  # migrated once, as the bot's first start would
    return tmp_path


def paper(home: Path, *, read_only: bool = True) -> SimulatedExchange:
    return SimulatedExchange(ReplayMarketData(), state_path=home / "var/state/paper_exchange.json", read_only=read_only)


def trade(home: Path, database_url: str, requests: list[OrderRequest]) -> None:
    """Orders placed and recorded as the one order path would, before any bot runs."""
    exchange, ledger = paper(home, read_only=False), Ledger(database_url)
    for request in requests:
        ledger.record_pending(request, None, exchange.now())
        ledger.apply_order(exchange.place_order(request))
    ledger.record_fills(exchange.list_fills())
    ledger.dispose()


def resting_buy(home: Path, client_order_id: str) -> OrderRequest:
    """A limit buy far below the market: it rests until cancelled."""
    price = (paper(home).best_bid_ask(BTC)[0] / 2).quantize(Decimal("0.01"))
    return OrderRequest(BTC, Side.BUY, OrderType.LIMIT, Decimal("0.0001"), client_order_id, price)


def held(home: Path) -> dict[str, str]:
    try:
        return dict(json.loads((home / "var/state/heartbeat.json").read_text())["positions"])
    except (OSError, ValueError, KeyError):
        return {}


def step_results(output: str) -> list[str]:
    """The result column of the printed table, step by step."""
    rows = [line.split("│") for line in output.splitlines() if line.startswith("│")]
    return [row[2].strip() for row in rows if row[1].strip()[:1].isdigit()]


def test_shutdown_of_a_running_bot_leaves_it_flat_without_orders_checkpointed_and_stopped_for_good(
    processes: Processes, tmp_path: Path, fresh_pg_url: str
) -> None:
    env = env_for(tmp_path, fresh_pg_url)
    Ledger(fresh_pg_url).dispose()
    trade(tmp_path, fresh_pg_url, [resting_buy(tmp_path, "resting-1")])
    bot = processes.start(tmp_path, env, "--profile", "dev", "--interval", "0.5")
    wait_for(lambda: held(tmp_path).get(BTC), 60, "the bot to hold a position")

    shutdown = subprocess.run(
        [str(PERPS_BOT), "shutdown", "--timeout", "30"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert shutdown.returncode == 0, shutdown.stdout + shutdown.stderr
    assert step_results(shutdown.stdout) == ["ok"] * 7, shutdown.stdout
    assert "stood down" in shutdown.stdout and "1 reduce-only exit(s)" in shutdown.stdout
    assert bot.wait(timeout=30) == 0, bot.stderr.read()  # type: ignore[union-attr]
    assert "stopped: lease lost" in bot.stdout.read()  # type: ignore[union-attr]  # the operator took the account
    log = (tmp_path / "var/logs/perps_bot.log").read_text()
    assert "WARNING" in next(line for line in log.splitlines() if "standing down" in line)  # planned: no CRITICAL
    assert "CRITICAL" not in log
    account = paper(tmp_path)
    assert account.positions() == [] and account.list_open_orders() == []
    assert (tmp_path / "var/state/REDUCE_ONLY").exists() and (tmp_path / "var/state/STOP").exists()
    ledger = Ledger(fresh_pg_url, migrate=False)
    try:
        sessions = ledger.list_sessions()
        assert [s.status for s in sessions] == ["stood_down"], "the bot was restarted, or ended otherwise"
        orders = {o.client_order_id: o.status for o in ledger.list_orders()}
        assert orders.pop("resting-1") == OrderStatus.CANCELLED.value
        exits = [c for c in orders if c.startswith("flatten-")]
        assert len(exits) == 1 and orders[exits[0]] == OrderStatus.FILLED.value
        assert all(status == OrderStatus.FILLED.value for status in orders.values())
        assert {p.symbol: p.quantity for p in ledger.positions().values() if p.quantity} == {}
        assert "graceful shutdown" in [c.reason for c in ledger.checkpoints()]
        assert ledger.open_incidents() == []
        events = [e.event for e in ledger.lease_history("default")]
        assert events[0] == "acquired" and events[-1] == "released" and "override" in events, events
    finally:
        ledger.dispose()


def test_a_stop_request_stops_a_running_bot_between_cycles_and_it_exits_zero(
    processes: Processes, tmp_path: Path, sqlite_url: str
) -> None:
    env = env_for(tmp_path, sqlite_url)
    bot = processes.start(tmp_path, env, "--profile", "dev", "--interval", "0.2")
    wait_for(lambda: (tmp_path / "var/state/heartbeat.json").exists(), 60, "the bot's first cycles")
    settings = load_settings().model_copy(update={"state_dir": tmp_path / "var/state"})

    request_stop(settings, "test: stop between cycles")

    assert bot.wait(timeout=30) == 0, bot.stderr.read()  # type: ignore[union-attr]
    assert "stopped: operator stop" in bot.stdout.read()  # type: ignore[union-attr]
    ledger = Ledger(sqlite_url, migrate=False)
    session = ledger.list_sessions()[-1]
    assert session.status == "stopped" and "operator stop" in (session.note or "")
    lease = ledger.current_lease("default")
    assert lease is None or lease.expired()  # released: nothing for a standby to wait out
    ledger.dispose()


def test_a_stop_request_older_than_the_bot_does_not_stop_it(tmp_path: Path, sqlite_url: str) -> None:
    env = env_for(tmp_path, sqlite_url)
    request_stop(load_settings().model_copy(update={"state_dir": tmp_path / "var/state"}), "an earlier shutdown")

    bot = subprocess.run(
        [str(PERPS_BOT), "--profile", "dev", "--cycles", "3", "--interval", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert bot.returncode == 0, bot.stderr
    assert "3 cycle(s)" in bot.stdout and "stopped: max_cycles" in bot.stdout


def test_a_position_that_cannot_close_times_out_the_wait_stops_the_sequence_and_opens_a_sev2_incident(
    home: Path, fresh_pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # 0.000005 BTC left: below BTC-USD's base_min_size 0.00001, no exit can sell it.
    trade(
        home,
        fresh_pg_url,
        [
            OrderRequest(BTC, Side.BUY, OrderType.MARKET, Decimal("0.00005"), "entry"),
            OrderRequest(BTC, Side.SELL, OrderType.MARKET, Decimal("0.000045"), "most-of-it"),
        ],
    )

    code = main(["shutdown", "--timeout", "0.5", "--note", "test: dust"])

    printed = capsys.readouterr().out
    assert code == 1
    assert step_results(printed) == ["ok", "failed", "not run", "not run", "not run", "not run", "not run"]
    assert "not flat after 0.5 s: BTC-USD 0.000005 still held" in printed and "dust" in printed
    assert "SEV-2 incident #" in printed
    ledger = Ledger(fresh_pg_url, migrate=False)
    try:
        assert {i.fingerprint: i.severity for i in ledger.open_incidents()} == {"graceful-shutdown": "SEV-2"}
        assert "wait for flat: failed" in ledger.open_incidents()[0].detail
        assert [c.reason for c in ledger.checkpoints()] == []  # step 6 never ran
    finally:
        ledger.dispose()
    assert (home / "var/state/REDUCE_ONLY").exists() and not (home / "var/state/STOP").exists()


@pytest.mark.parametrize("timeout", ["0", "-5", "abc", "nan"])
def test_a_timeout_that_is_not_seconds_above_zero_is_one_line_exit_2_and_nothing_is_written_or_sent(
    home: Path, fresh_pg_url: str, capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    trade(home, fresh_pg_url, [OrderRequest(BTC, Side.BUY, OrderType.MARKET, Decimal("0.01"), "entry")])
    account_file = home / "var/state/paper_exchange.json"
    before = account_file.read_bytes()

    code = main(["shutdown", f"--timeout={timeout}"])

    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "--timeout" in err and "e.g. --timeout 300" in err
    assert not (home / "var/state/REDUCE_ONLY").exists() and not (home / "var/state/STOP").exists()
    ledger = Ledger(fresh_pg_url, migrate=False)
    try:
        assert [o.client_order_id for o in ledger.list_orders()] == ["entry"]
        assert ledger.open_incidents() == [] and ledger.lease_history("default") == []
    finally:
        ledger.dispose()
    assert account_file.read_bytes() == before


def test_with_declared_accounts_shutdown_needs_one_named_or_all(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = home / "accounts.yaml"
    accounts.write_text(paper_accounts_yaml(("alpha", "beta")))
    monkeypatch.setenv("ACCOUNTS_FILE", str(accounts))

    code = main(["shutdown"])

    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "shutdown: --account: required" in err and "alpha, beta" in err
    assert not (home / "var/state").exists()
