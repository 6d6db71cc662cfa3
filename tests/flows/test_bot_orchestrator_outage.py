"""A served trading-bot run through a 120 s SIGSTOP, then a SIGKILL, of its server.

A private Prefect server (this test pauses and kills it), a runner serving only trading-bot (a few seconds to start,
where serve_all registers and schedules every deployment of prefect.yaml), the paper bot on a SQLite ledger cycling
every second. Cycle times come from the bot's own per-cycle heartbeat lines in perps_bot.log (HEARTBEAT_INTERVAL
below the cycle interval: one line per cycle, with the wall-clock time it was written).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import VariableCreate
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.embedded import prefect_env, spawn, stop_children, wait_for_api
from tests.flows.conftest import ROOT, free_port, with_paper_bot
from trader.domain import OrderStatus
from trader.drills.coherence import compare, paper_exchange_truth
from trader.ledger import Ledger

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INTERVAL = 1.0
OUTAGE_SECONDS = 120.0
AFTER_KILL_SECONDS = 20.0
SERVE_BOT = "from flows.bot import trading_bot; trading_bot.serve(name='outage', limit=1)"
HEARTBEAT_LINE = re.compile(r"^(\S+ \S+) INFO trader\.bot heartbeat session=\S+ cycles=(\d+) ")


@pytest.fixture
def stack(tmp_path: Path, sqlite_url: str) -> Iterator[dict[str, object]]:
    """Private server + runner; teardown kills (by pid, only what this test started) whatever is left."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    env = prefect_env(home, port)
    env = with_paper_bot(env, sqlite_url, tmp_path)
    env.update({"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "METRICS_ENABLED": "0"})
    server = spawn(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], home / "server.log", env, ROOT
    )
    children = [server]
    bot_pids: list[int] = []
    try:
        wait_for_api(port, timeout=180, process=server)
        with (tmp_path / "serve.log").open("ab") as log:
            runner = subprocess.Popen(
                [sys.executable, "-c", SERVE_BOT],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        children.append(runner)
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            yield {"env": env, "server": server, "bot_pids": bot_pids, "tmp": tmp_path}
    finally:
        for pid in bot_pids:  # the cancel cannot reach a bot whose server is dead
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGCONT)
        stop_children(children, grace=10)
        print((tmp_path / "serve.log").read_text()[-4000:] if (tmp_path / "serve.log").exists() else "no serve.log")


def cycle_times(log_file: Path) -> dict[int, float]:
    """Wall-clock time of each cycle's heartbeat line (perps_bot.log), by cycle number."""
    times: dict[int, float] = {}
    if log_file.exists():
        for line in log_file.read_text().splitlines():
            if match := HEARTBEAT_LINE.match(line):
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                times.setdefault(int(match.group(2)), stamp.timestamp())  # stop() repeats the last one
    return times


def heartbeat(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.1)


def test_the_bot_cycles_through_a_hung_then_dead_prefect_server_and_its_switches_still_work(
    stack: dict, sqlite_url: str
) -> None:
    env, server = stack["env"], stack["server"]
    state_dir, log_file = Path(env["STATE_DIR"]), Path(env["LOG_DIR"]) / "perps_bot.log"
    wait_for(lambda: _deployment_ready("trading-bot/outage"), 120, "the runner registering trading-bot/outage")
    run = run_deployment(
        "trading-bot/outage", parameters={"profile": "dev", "cycle_interval_seconds": INTERVAL}, timeout=0
    )
    run_id: str = str(run.id)  # type: ignore[union-attr]  # a sync call returns the FlowRun
    wait_for(lambda: len(cycle_times(log_file)) >= 3, 120, "the bot's first cycles")
    ledger = Ledger(sqlite_url)
    lease = ledger.current_lease("default")  # ACCOUNT unset: the default account
    assert lease is not None and lease.holder.flow_run_id == run_id, lease
    assert lease.holder.flow_run_url and run_id in lease.holder.flow_run_url
    stack["bot_pids"].append(lease.holder.pid)

    # 1. The server hangs (SIGSTOP: connections accepted by the kernel, never answered) for 120 s.
    os.killpg(server.pid, signal.SIGSTOP)
    paused_at = time.time()
    wait_for(lambda: time.time() - paused_at > 20, 30, "20 s into the outage")
    (state_dir / "KILL_SWITCH").touch()  # the flag file works every cycle, whatever the API does
    touched = max(cycle_times(log_file))
    wait_for(lambda: heartbeat(state_dir).get("trading_state") == "halted", 3 * INTERVAL, "halted by the flag file")
    halted_cycle = heartbeat(state_dir)["cycles"]
    orders_at_halt = len(ledger.list_orders())
    refused_before = heartbeat(state_dir)["guard_counters"].get("kill_switch", 0)
    wait_for(lambda: heartbeat(state_dir).get("cycles", 0) >= halted_cycle + 8, 20, "8 cycles with the switch on")
    orders_while_halted = len(ledger.list_orders()) - orders_at_halt
    refused_while_halted = heartbeat(state_dir)["guard_counters"].get("kill_switch", 0) - refused_before
    (state_dir / "KILL_SWITCH").unlink()
    wait_for(lambda: heartbeat(state_dir).get("trading_state") == "trading", 3 * INTERVAL, "trading again")
    wait_for(lambda: time.time() - paused_at >= OUTAGE_SECONDS, OUTAGE_SECONDS + 5, "the end of the outage")
    os.killpg(server.pid, signal.SIGCONT)
    resumed_at = time.time()

    # 2. The API answers again: a Variable set now is applied within a few cycles.
    with get_client(sync_client=True) as client:
        client.create_variable(VariableCreate(name="kill_switch", value=True))
    set_at = time.time()
    wait_for(lambda: heartbeat(state_dir).get("trading_state") == "halted", 10 * INTERVAL, "the kill_switch Variable")
    variable_applied_after = time.time() - set_at

    # 3. The server is killed: the bot cycles on.
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    killed_at = time.time()
    wait_for(lambda: time.time() - killed_at >= AFTER_KILL_SECONDS, AFTER_KILL_SECONDS + 5, "20 s after the kill")
    times = cycle_times(log_file)

    # Stop it as the runner would (SIGTERM: between cycles); the dead server cannot deliver a cancel.
    os.kill(lease.holder.pid, signal.SIGTERM)
    wait_for(
        lambda: (s := ledger.find_session_by_flow_run(run_id)) is not None and s.ended_at is not None,
        30,
        "the session ended after SIGTERM",
    )
    session = ledger.find_session_by_flow_run(run_id)
    orders = ledger.list_orders()

    cycles = sorted(c for c in times if c >= 3)  # start-up: the first cycles may share one heartbeat interval
    assert cycles == list(range(cycles[0], cycles[-1] + 1)), "a cycle's heartbeat line is missing"
    gaps = [(times[b] - times[a], a) for a, b in zip(cycles, cycles[1:], strict=False)]
    longest, at_cycle = max(gaps)
    print(
        f"{len(cycles)} cycles, longest gap {longest:.2f} s after cycle {at_cycle}; Variable applied after "
        f"{variable_applied_after:.1f} s; halted at cycle {halted_cycle} (touched after {touched})"
    )
    assert longest <= 2 * INTERVAL, f"cycle gap {longest:.2f} s after cycle {at_cycle} (> 2 intervals)"
    in_outage = [c for c in cycles if paused_at <= times[c] <= resumed_at]
    after_kill = [c for c in cycles if times[c] >= killed_at]
    assert len(in_outage) >= 0.9 * OUTAGE_SECONDS / INTERVAL, f"only {len(in_outage)} cycles during the outage"
    assert times[after_kill[-1]] - killed_at >= AFTER_KILL_SECONDS - 2 * INTERVAL, "cycles stopped after the kill"
    assert orders_while_halted == 0 and refused_while_halted > 0, (orders_while_halted, refused_while_halted)
    assert variable_applied_after <= 5 * INTERVAL + 2.0
    assert session is not None and session.status == "stopped", session
    assert orders and not [o for o in orders if o.status == OrderStatus.PENDING_SUBMIT]
    report = compare(ledger, paper_exchange_truth(state_dir / "paper_exchange.json"))
    assert report.match, report.summary()  # every order and fill once, positions equal the exchange's


def _deployment_ready(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except Exception:
            return False
    return True
