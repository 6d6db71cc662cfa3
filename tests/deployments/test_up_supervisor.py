"""`perps-bot up` as a supervisor, against real processes: a killed server or runner comes back while the bot keeps
cycling, status reads every part, and SIGTERM or SIGINT leaves no process and no port behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from deployments.embedded import api_healthy, api_json, descendants
from tests.processes import wait_for
from trader.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PERPS_BOT = Path(sys.executable).parent / "perps-bot"
CYCLE_SECONDS = 1.0  # the dev profile's interval: the bot under `up` runs with it
MAX_CYCLE_GAP = 3 * CYCLE_SECONDS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port and it can be bound again."""
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stack_env(metrics_port: int, **extra: str) -> dict[str, str]:
    """The test's environment without any Prefect or bot setting of its own, plus the stack's."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k not in settings}
    for name in ("COINBASE_API_KEY", "COINBASE_API_SECRET", "COINBASE_KEY_FILE", "PERPS_PROFILE"):
        env.pop(name, None)
    env.update(
        {
            "METRICS_ENABLED": "1",
            "METRICS_PORT": str(metrics_port),
            "HEARTBEAT_INTERVAL_SECONDS": "0.2",
            "BROKER": "simulated",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": str(ROOT),
            **extra,
        }
    )
    return env


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (tells a pid from a later process that reused it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


@dataclass
class Stack:
    """One `perps-bot up` in its own folder and session."""

    cwd: Path
    port: int
    metrics_port: int
    env: dict[str, str]
    process: subprocess.Popen
    output: Path
    remembered: dict[int, int | None] = field(default_factory=dict)

    def remember(self) -> None:
        """Note every process of the stack (by pid and start time) for the teardown of a test that failed."""
        pids = [self.process.pid, *descendants(self.process.pid)]
        with contextlib.suppress(Exception):  # no lease yet
            pids.append(self.bot_pid())
        self.remembered.update({pid: start_time(pid) for pid in pids})

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def up_file(self) -> dict[str, Any]:
        try:
            return json.loads((self.cwd / "var" / "prefect" / "up.json").read_text())
        except (OSError, ValueError):
            return {}

    def heartbeat(self) -> dict[str, Any]:
        try:
            return json.loads((self.cwd / "var" / "state" / "heartbeat.json").read_text())
        except (OSError, ValueError):
            return {}

    def bot_pid(self) -> int:
        """The pid of the process holding the account lease: the bot."""
        from trader.ledger import Ledger

        ledger = Ledger(f"sqlite:///{self.cwd / 'var' / 'state' / 'ledger.db'}", migrate=False)
        try:
            lease = ledger.current_lease("default")
        finally:
            ledger.dispose()
        assert lease is not None and not lease.expired()
        return lease.holder.pid

    def status(self, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PERPS_BOT), "status"],
            cwd=cwd or self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log(self) -> str:
        up_log = self.cwd / "var" / "logs" / "up.log"
        return self.output.read_text()[-3000:] + (up_log.read_text()[-2000:] if up_log.exists() else "")


def start_stack(cwd: Path, *args: str) -> Stack:
    cwd.mkdir(parents=True, exist_ok=True)
    port, metrics_port = free_port(), free_port()
    env = stack_env(metrics_port)
    output = cwd / "up.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [str(PERPS_BOT), "up", "--port", str(port), *args],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Stack(cwd, port, metrics_port, env, process, output)


def stop_stack(stack: Stack) -> None:
    """Teardown for a test that failed before stopping it: SIGTERM `up`, then SIGKILL any process of it we noted."""
    if stack.process.poll() is None:
        stack.remember()
        stack.process.send_signal(signal.SIGTERM)
        try:
            stack.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stack.process.kill()
            stack.process.wait()
    for pid, ticks in stack.remembered.items():
        if ticks is not None and start_time(pid) == ticks:  # the same process, not a reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class HeartbeatWatch:
    """Reads heartbeat.json every 0.1 s in a thread and keeps the longest gap between two new heartbeats."""

    stack: Stack
    beats: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> HeartbeatWatch:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            wall = self.stack.heartbeat().get("wall_time")
            if wall is not None and (not self.beats or wall != self.beats[-1]):
                self.beats.append(wall)
            time.sleep(0.1)

    def max_gap(self) -> float:
        """Longest wait between heartbeats, counting the wait since the last one until now."""
        points = [*self.beats, time.time()]
        return max(b - a for a, b in zip(points, points[1:], strict=False))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`perps-bot up` with the bot cycling (shared by the tests of this module; the last one stops it)."""
    running = start_stack(tmp_path_factory.mktemp("up"))
    try:
        wait_for(
            lambda: running.heartbeat().get("cycles", 0) >= 3 or running.process.poll() is not None,
            timeout=300,
            what="the bot under perps-bot up cycles",
        )
        assert running.process.poll() is None, running.log()
        running.remember()
        yield running
    finally:
        stop_stack(running)


def test_status_reports_every_part_of_a_running_stack(stack: Stack) -> None:
    result = stack.status()

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["server", "runner", "bot", "lease", "cycle", "guards", "incidents"]
    assert all(" OK " in line for line in lines), result.stdout
    assert f"127.0.0.1:{stack.port}" in lines[0] and "Prefect 3." in lines[0]
    assert f"/runs/flow-run/{stack.up_file()['flow_run_id']}" in lines[2] and "Running" in lines[2]


def test_status_finds_a_server_named_by_prefect_api_url_from_any_folder(stack: Stack, tmp_path: Path) -> None:
    result = stack.status(
        cwd=tmp_path,
        PREFECT_API_URL=stack.api_url,
        STATE_DIR=str(stack.cwd / "var" / "state"),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"127.0.0.1:{stack.port}" in result.stdout.splitlines()[0]


def test_status_is_degraded_while_the_server_is_paused(stack: Stack) -> None:
    server = stack.up_file()["server_pid"]
    os.kill(server, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = stack.status()
        took = time.monotonic() - started
    finally:
        os.kill(server, signal.SIGCONT)

    assert result.returncode == 1, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert " DOWN " in lines["server"] and " OK " in lines["cycle"] and " OK " in lines["lease"]
    assert took < 30  # short timeouts: a hung server never hangs status


def test_a_killed_server_is_restarted_while_the_bot_keeps_cycling(stack: Stack) -> None:
    old, runner = stack.up_file()["server_pid"], stack.up_file()["runner_pid"]
    cycles = stack.heartbeat()["cycles"]

    with HeartbeatWatch(stack) as watch:
        os.kill(old, signal.SIGKILL)
        new = wait_for(
            lambda: (pid := stack.up_file().get("server_pid")) not in (None, old) and pid,
            timeout=180,
            what="perps-bot up restarts the server",
        )
        wait_for(lambda: api_healthy(stack.port), timeout=30, what="the restarted server answers")
        back = datetime.now(UTC)
        wait_for(lambda: runner_polled_after(stack, back), timeout=60, what="the runner polls the new server")
        wait_for(lambda: stack.heartbeat()["cycles"] >= cycles + 5, timeout=60, what="the bot cycles on")
        gap = watch.max_gap()

    assert stack.process.poll() is None, stack.log()
    assert gap <= MAX_CYCLE_GAP, f"longest gap between heartbeats {gap:.1f} s"
    assert start_time(old) is None and new != old
    assert stack.up_file()["runner_pid"] == runner  # the runner outlived the outage and reconnected by itself
    assert f"Prefect server (pid {old}) exited with code -9" in (stack.cwd / "var" / "logs" / "up.log").read_text()
    run = api_json(f"{stack.api_url}/flow_runs/{stack.up_file()['flow_run_id']}")
    assert isinstance(run, dict) and run["state"]["type"] == "RUNNING"


def runner_polled_after(stack: Stack, moment: datetime) -> bool:
    """The runner (the same process, reconnected on its own) polled trading-bot/paper after this moment."""
    try:
        deployment = api_json(f"{stack.api_url}/deployments/name/trading-bot/paper")
    except OSError:
        return False
    polled = deployment.get("last_polled") if isinstance(deployment, dict) else None
    return polled is not None and datetime.fromisoformat(polled.replace("Z", "+00:00")) > moment


def test_a_server_that_keeps_failing_is_restarted_with_growing_backoff(stack: Stack) -> None:
    """The port taken by someone else: each new server dies at once and `up` waits twice as long before the next."""
    up_log = stack.cwd / "var" / "logs" / "up.log"
    old = stack.up_file()["server_pid"]
    before = len(up_log.read_text().splitlines())

    def delays() -> list[int]:
        lines = "\n".join(up_log.read_text().splitlines()[before:])
        return [int(d) for d in re.findall(r"restart #\d+ in (\d+) s", lines)]

    with HeartbeatWatch(stack) as watch:
        blocker = socket.socket()
        try:
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: start_time(old) is None, timeout=10, what="the server is gone")
            wait_for(lambda: port_free(stack.port), timeout=10, what="its port is free")
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old server's TIME_WAITs
            blocker.bind(("127.0.0.1", stack.port))
            blocker.listen()
            wait_for(lambda: len(delays()) >= 3, timeout=120, what="three restarts", interval=0.5)
        finally:
            blocker.close()
        wait_for(
            lambda: stack.up_file().get("server_pid") not in (None, old) and api_healthy(stack.port),
            timeout=180,
            what="the server is back once the port is free",
        )
        gap = watch.max_gap()

    first, second, third = delays()[:3]
    assert (second, third) == (2 * first, 4 * first), up_log.read_text()
    assert stack.process.poll() is None, stack.log()
    assert gap <= MAX_CYCLE_GAP, f"longest gap between heartbeats {gap:.1f} s"  # the bot never noticed


def test_a_killed_runner_is_restarted_and_the_bot_trades_on_in_its_one_run(stack: Stack) -> None:
    old = stack.up_file()["runner_pid"]
    run_id = stack.up_file()["flow_run_id"]
    bot_pid = stack.bot_pid()
    bot_started = start_time(bot_pid)
    cycles = stack.heartbeat()["cycles"]

    with HeartbeatWatch(stack) as watch:
        os.kill(old, signal.SIGKILL)
        wait_for(
            lambda: stack.up_file().get("runner_pid") not in (None, old),
            timeout=120,
            what="perps-bot up restarts the runner",
        )
        wait_for(lambda: stack.heartbeat()["cycles"] >= cycles + 8, timeout=60, what="the bot cycles on")
        gap = watch.max_gap()

    assert gap <= MAX_CYCLE_GAP, f"longest gap between heartbeats {gap:.1f} s"
    deployment = api_json(f"{stack.api_url}/deployments/name/trading-bot/paper")
    assert isinstance(deployment, dict)
    runs = api_json(
        f"{stack.api_url}/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}, "limit": 10},
    )
    assert isinstance(runs, list)
    assert [(r["id"], r["state"]["type"]) for r in runs] == [(run_id, "RUNNING")]  # no second bot run
    assert stack.bot_pid() == bot_pid and start_time(bot_pid) == bot_started  # the same bot process, not a new one


def test_a_new_up_adopts_the_bot_run_that_still_trades_instead_of_starting_another(stack: Stack) -> None:
    """`up` itself SIGKILLed (no cleanup possible), its server and runner gone: the bot trades on; the next `up`
    in the folder adopts its run."""
    record = stack.up_file()
    bot_pid, run_id = stack.bot_pid(), record["flow_run_id"]
    stack.remember()
    stack.process.kill()
    stack.process.wait()
    for pid in (record["server_pid"], record["runner_pid"]):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: port_free(stack.port), timeout=30, what="the killed server's port is free")
    cycles = stack.heartbeat()["cycles"]

    with HeartbeatWatch(stack) as watch:
        with (stack.cwd / "up.out").open("ab") as sink:
            stack.process = subprocess.Popen(
                [str(PERPS_BOT), "up", "--port", str(stack.port)],
                cwd=stack.cwd,
                env=stack.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(
            lambda: (
                (stack.up_file().get("pid") == stack.process.pid and stack.up_file().get("flow_run_id"))
                or stack.process.poll() is not None
            ),
            timeout=240,
            what="the second perps-bot up starts",
        )
        wait_for(lambda: stack.heartbeat()["cycles"] >= cycles + 5, timeout=60, what="the bot cycles on")
        gap = watch.max_gap()

    assert stack.process.poll() is None, stack.log()
    assert stack.up_file()["flow_run_id"] == run_id
    assert stack.bot_pid() == bot_pid
    assert f"trading-bot run {run_id} is still trading" in (stack.cwd / "var" / "logs" / "up.log").read_text()
    deployment = api_json(f"{stack.api_url}/deployments/name/trading-bot/paper")
    assert isinstance(deployment, dict)
    runs = api_json(f"{stack.api_url}/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})
    assert isinstance(runs, list) and [r["id"] for r in runs] == [run_id]
    assert gap <= MAX_CYCLE_GAP, f"longest gap between heartbeats {gap:.1f} s"


def test_sigterm_stops_the_bot_then_runner_then_server_and_leaves_nothing(stack: Stack) -> None:
    """Runs last: consumes the shared stack (restarted server and runner, the bot orphaned by the first runner)."""
    up = stack.process.pid
    started = {pid: start_time(pid) for pid in [up, *descendants(up), stack.bot_pid()]}
    assert len(started) >= 4, f"server, runner, bot and up expected, found {started}"
    ledger_url = f"sqlite:///{stack.cwd / 'var' / 'state' / 'ledger.db'}"

    stack.process.send_signal(signal.SIGTERM)
    code = stack.process.wait(timeout=60)

    assert code == 0, stack.log()
    left = [pid for pid, ticks in started.items() if ticks is not None and start_time(pid) == ticks]
    assert left == [], f"left running: {left}"
    assert port_free(stack.port) and port_free(stack.metrics_port)
    assert not (stack.cwd / "var" / "prefect" / "up.json").exists()
    from trader.ledger import Ledger

    ledger = Ledger(ledger_url, migrate=False)
    try:
        session = ledger.list_sessions()[-1]
    finally:
        ledger.dispose()
    assert session.status == "stopped"  # between cycles, not killed mid-cycle


def test_sigint_to_the_session_stops_everything(tmp_path: Path) -> None:
    """Ctrl-C: SIGINT to the whole session, as a terminal sends it (a background shell job ignores SIGINT)."""
    stack = start_stack(tmp_path, "--no-bot")
    try:
        wait_for(
            lambda: stack.up_file().get("runner_pid") or stack.process.poll() is not None,
            timeout=300,
            what="perps-bot up --no-bot starts",
        )
        assert stack.process.poll() is None, stack.log()
        started = {pid: start_time(pid) for pid in [stack.process.pid, *descendants(stack.process.pid)]}

        os.killpg(stack.process.pid, signal.SIGINT)
        code = stack.process.wait(timeout=60)

        assert code == 0, stack.log()
        left = [pid for pid, ticks in started.items() if ticks is not None and start_time(pid) == ticks]
        assert left == [], f"left running: {left}"
        assert port_free(stack.port)
    finally:
        stop_stack(stack)
