"""Supervision timings of the bot under `perps-bot up` (paper, SQLite ledger, a scratch folder), all real processes.

    .venv/bin/python bench/supervision.py [--kills 10] [--outage 120] [--settle 62] [--zombie]
                                          [--skip-outage] [--skip-standby] [--keep]

- Restarts: N SIGKILLs of the bot's flow-run process (the lease holder's pid, nothing else), each after the run has
  traded for --settle seconds (default: the restart policy's stable_after_seconds + 2, so each kill is an independent
  crash, restarted without crash-loop backoff). Figure: seconds from the kill to the new run's first cycle (its
  session's cycle count seen > 0 in the ledger, polled every 0.1 s), p50 and max. Path: runner reports Crashed ->
  the restart automation's RunDeployment -> runner starts the run -> restart policy -> lease of the dead pid broken
  -> engine-crash recovery and startup reconciliation -> first cycle. Goal: p50 <= 30 s, max <= 60 s.
- Outage: the Prefect server of `up` SIGSTOPped for --outage seconds; figure: the longest gap between two cycles
  during it, against the longest gap in a baseline window of the same length before it (and 2 cycle intervals, the
  goal). Also reported: the bot run's Prefect state afterwards and whether a restart run appeared (a zombie verdict).
- Takeover: two `perps-bot` processes on one scratch ledger, the second with --standby; the holder SIGSTOPped;
  figure: seconds until the standby holds the lease (goal: TTL + 5 s). Null, with a note, when the CLI has no
  --standby yet.
- Zombie (--zombie): the bot's flow-run process SIGSTOPped, so its heartbeats stop while the runner still sees it;
  figure: seconds until another run trades (zombie automation -> Crashed -> restart automation -> new run).
- Duplicates: client_order_ids seen more than once on the paper exchange, plus every difference the coherence check
  finds between the ledger and the exchange, after the restarts and the outage.

The last line is one JSON object: restart_s_p50, restart_s_max, outage_max_gap_s, takeover_s, duplicate_orders.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.automations import BOT_HEARTBEAT_SECONDS, ZOMBIE_AFTER_SECONDS  # noqa: E402
from trader.drills.coherence import compare, paper_exchange_truth  # noqa: E402
from trader.ledger import Ledger  # noqa: E402
from trader.supervision import RestartPolicy  # noqa: E402

ACCOUNT = "default"
PERPS_BOT = str(Path(sys.executable).with_name("perps-bot"))
GOAL_RESTART_P50 = 30.0
GOAL_RESTART_MAX = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_env(folder: Path, kills: int) -> dict[str, str]:
    """The paper stack in `folder`: SQLite ledger, its own metrics port, a restart cap above the kill count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COINBASE_", "PREFECT_", "SLACK_"))}
    env.update(
        {
            "BROKER": "simulated",
            "STATE_DIR": str(folder / "var" / "state"),
            "LOG_DIR": str(folder / "var" / "logs"),
            "METRICS_PORT": str(free_port()),
            "HEARTBEAT_INTERVAL_SECONDS": "0",  # a ledger heartbeat every cycle: cycle gaps are visible in the ledger
            "RESTART_MAX_PER_HOUR": str(kills + 5),
            "PYTHONPATH": str(ROOT),
        }
    )
    env.pop("DATABASE_URL", None)
    env.pop("PERPS_PROFILE", None)
    return env


class Stack:
    """`perps-bot up` in a scratch folder, stopped with SIGTERM (as a supervisor would) at the end."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.port = free_port()
        self.log = (folder / "up.out").open("ab")
        self.process = subprocess.Popen(
            [PERPS_BOT, "up", "--profile", "dev", "--port", str(self.port)],
            cwd=folder,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ledger_url = f"sqlite:///{folder / 'var' / 'state' / 'ledger.db'}"
        self._ledger: Ledger | None = None

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            deadline = time.monotonic() + 240
            while not (self.folder / "var" / "state" / "ledger.db").exists():
                self.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError("no ledger after 240 s; see up.out")
                time.sleep(0.5)
            self._ledger = Ledger(self.ledger_url, account=ACCOUNT, migrate=False)
        return self._ledger

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"perps-bot up exited with {self.process.returncode}; see {self.folder / 'up.out'}")

    def up_record(self) -> dict[str, Any]:
        return json.loads((self.folder / "var" / "prefect" / "up.json").read_text())

    def holder(self, timeout: float = 240) -> tuple[str, int]:
        """(flow run id, pid) of the bot holding the account's lease, once its session has cycled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                lease = self.ledger.current_lease(ACCOUNT)
            except Exception:  # tables not there yet
                lease = None
            if lease is not None and not lease.expired() and lease.holder.flow_run_id:
                session = self.ledger.find_session_by_flow_run(lease.holder.flow_run_id)
                if session is not None and session.cycles > 0:
                    return lease.holder.flow_run_id, lease.holder.pid
            time.sleep(0.1)
        raise RuntimeError(f"no trading bot holds the lease after {timeout:.0f} s")

    def stop(self) -> None:
        if self._ledger is not None:
            self._ledger.dispose()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def measure_restarts(stack: Stack, kills: int, settle: float) -> list[float]:
    """Seconds from each SIGKILL of the holder to the next run's first cycle."""
    seconds = []
    for number in range(kills):
        run_id, pid = stack.holder()
        session = stack.ledger.find_session_by_flow_run(run_id)
        assert session is not None
        while (time.time() - session.started_at.timestamp()) < settle:
            stack.check_alive()
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        new_run, _ = _next_holder(stack, run_id)
        seconds.append(time.monotonic() - killed_at)
        print(
            f"  kill {number + 1}/{kills}: run {run_id} (pid {pid}) -> run {new_run} cycling after {seconds[-1]:.1f} s"
        )
    return seconds


def _next_holder(stack: Stack, killed_run: str, timeout: float = 300) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        lease = stack.ledger.current_lease(ACCOUNT)
        if lease is not None and lease.holder.flow_run_id not in (None, killed_run):
            session = stack.ledger.find_session_by_flow_run(lease.holder.flow_run_id)  # type: ignore[arg-type]
            if session is not None and session.cycles > 0:
                return str(lease.holder.flow_run_id), lease.holder.pid
        time.sleep(0.1)
    raise RuntimeError(f"no new bot run traded within {timeout:.0f} s of killing run {killed_run}")


def measure_zombie(stack: Stack) -> tuple[float, str]:
    """SIGSTOP the bot's flow-run process (the runner still sees it alive): seconds until another run trades."""
    run_id, pid = stack.holder()
    os.kill(pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        new_run, _ = _next_holder(stack, run_id, timeout=400)
    finally:
        os.kill(pid, signal.SIGKILL)  # the paused process (a descendant of `up`): it would be fenced anyway
    return (
        time.monotonic() - paused_at,
        f"run {run_id} paused -> run {new_run} trading; state {_run_state(stack, run_id)}",
    )


def cycle_gaps(stack: Stack, seconds: float) -> tuple[float, int]:
    """Longest wall-clock gap between two observed cycle counts of the lease holder's session, and cycles seen."""
    deadline = time.monotonic() + seconds
    last_count, last_at, longest, cycles = -1, time.monotonic(), 0.0, 0
    while time.monotonic() < deadline:
        lease = stack.ledger.current_lease(ACCOUNT)
        run = lease.holder.flow_run_id if lease is not None else None
        session = stack.ledger.find_session_by_flow_run(run) if run else None
        now = time.monotonic()
        if session is not None and session.cycles != last_count:
            if last_count >= 0:
                longest = max(longest, now - last_at)
                cycles += max(session.cycles - last_count, 0)
            last_count, last_at = session.cycles, now
        time.sleep(0.05)
    return max(longest, time.monotonic() - last_at), cycles


def measure_outage(stack: Stack, outage: float) -> dict[str, Any]:
    """Longest cycle gap with the Prefect server SIGSTOPped, against a baseline window of the same length."""
    stack.holder()
    baseline_gap, baseline_cycles = cycle_gaps(stack, outage)
    server_pid = stack.up_record()["server_pid"]
    run_before, _ = stack.holder()
    os.kill(server_pid, signal.SIGSTOP)
    try:
        outage_gap, outage_cycles = cycle_gaps(stack, outage)
    finally:
        with contextlib.suppress(ProcessLookupError):  # `up` replaced the server meanwhile
            os.kill(server_pid, signal.SIGCONT)
    after_gap, _ = cycle_gaps(stack, 60)  # the zombie automation evaluates once the server runs again
    run_after, _ = stack.holder()
    return {
        "baseline_gap_s": round(baseline_gap, 2),
        "baseline_cycles": baseline_cycles,
        "outage_gap_s": round(outage_gap, 2),
        "outage_cycles": outage_cycles,
        "after_gap_s": round(after_gap, 2),
        "holder_changed": run_after != run_before,
        "run_state_after": _run_state(stack, run_before),
    }


def _run_state(stack: Stack, run_id: str) -> str | None:
    env = {"PREFECT_API_URL": f"http://127.0.0.1:{stack.port}/api"}
    code = (
        "from uuid import UUID; from prefect.client.orchestration import get_client\n"
        f"with get_client(sync_client=True) as c: print(c.read_flow_run(UUID('{run_id}')).state.type.value)"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], env={**stack.env, **env}, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return None
    return result.stdout.strip() or None


def measure_takeover(folder: Path, env: dict[str, str]) -> tuple[float | None, str]:
    """Seconds from SIGSTOP of the holder to the standby holding the lease; None when --standby is not there."""
    helptext = subprocess.run([PERPS_BOT, "--help"], env=env, capture_output=True, text=True, timeout=60).stdout
    if "--standby" not in helptext:
        return None, "perps-bot has no --standby yet"
    work = folder / "standby"
    work.mkdir()
    local = {**env, "STATE_DIR": str(work / "state"), "LOG_DIR": str(work / "logs"), "METRICS_ENABLED": "0"}
    ledger_url = f"sqlite:///{work / 'state' / 'ledger.db'}"
    cmd = [PERPS_BOT, "--profile", "dev", "--interval", "1"]
    holder = subprocess.Popen(cmd, cwd=work, env=local, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    standby: subprocess.Popen[bytes] | None = None
    ledger: Ledger | None = None
    try:
        deadline = time.monotonic() + 120
        while ledger is None:
            if (work / "state" / "ledger.db").exists():
                ledger = Ledger(ledger_url, account=ACCOUNT, migrate=False)
            elif time.monotonic() > deadline:
                return None, "the first bot never created its ledger"
            time.sleep(0.2)
        while (lease := _lease(ledger)) is None or lease.holder.pid != holder.pid:
            if time.monotonic() > deadline:
                return None, "the first bot never took the lease"
            time.sleep(0.2)
        standby = subprocess.Popen(
            [*cmd, "--standby"], cwd=work, env=local, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(5)  # the standby is waiting on the lease (nothing in the ledger to poll for until it takes it)
        os.kill(holder.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        while (lease := _lease(ledger)) is None or lease.holder.pid != standby.pid:
            if time.monotonic() - paused_at > 180:
                return None, "the standby did not take over within 180 s"
            time.sleep(0.1)
        ttl = lease.ttl_seconds
        return time.monotonic() - paused_at, f"TTL {ttl:g} s, goal <= {ttl + 5:g} s"
    finally:
        for process in (holder, standby):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        if ledger is not None:
            ledger.dispose()


def _lease(ledger: Ledger) -> Any:
    try:
        return ledger.current_lease(ACCOUNT)
    except Exception:
        return None


def duplicates(stack: Stack) -> tuple[int, str]:
    """client_order_ids more than once on the exchange, plus the coherence check's problems (ledger vs exchange)."""
    truth = paper_exchange_truth(Path(stack.env["STATE_DIR"]) / "paper_exchange.json")
    twice = sum(count - 1 for count in Counter(o.client_order_id for o in truth.orders).values() if count > 1)
    report = compare(stack.ledger, truth)
    return twice + len(report.problems), report.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    policy = RestartPolicy()
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--settle", type=float, default=policy.stable_after_seconds + 2)
    parser.add_argument("--outage", type=float, default=120.0)
    parser.add_argument("--skip-outage", action="store_true")
    parser.add_argument("--skip-standby", action="store_true")
    parser.add_argument("--zombie", action="store_true", help="also: SIGSTOP the bot until the zombie automation acts")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.settle < 0 or args.outage <= 0:
        print("--kills must be >= 1, --settle >= 0 and --outage > 0", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="bench-supervision-"))
    env = bench_env(folder, args.kills)
    figures: dict[str, Any] = {}
    crash_loop = [policy.delay_seconds(n, 0) for n in range(policy.max_per_hour)]
    print(
        f"scratch folder {folder}; restart policy: cap {args.kills + 5}/h for the bench (default {policy.max_per_hour})"
    )
    print(f"  crash-loop backoff (not exercised: kills come after {args.settle:.0f} s of trading): {crash_loop} s")
    stack = Stack(folder, env)
    try:
        started = time.monotonic()
        stack.holder()
        print(f"perps-bot up: bot trading after {time.monotonic() - started:.1f} s (cold start, baseline)")
        restarts = measure_restarts(stack, args.kills, args.settle)
        p50, worst = statistics.median(restarts), max(restarts)
        figures.update(restart_s_p50=round(p50, 2), restart_s_max=round(worst, 2))
        print(
            f"restarts: {args.kills} SIGKILLs -> p50 {p50:.1f} s (goal <= {GOAL_RESTART_P50:g}), "
            f"max {worst:.1f} s (goal <= {GOAL_RESTART_MAX:g})"
        )
        if args.skip_outage:
            figures["outage_max_gap_s"] = None
        else:
            outage = measure_outage(stack, args.outage)
            figures["outage_max_gap_s"] = outage["outage_gap_s"]
            print(
                f"outage: Prefect server SIGSTOPped {args.outage:.0f} s -> longest cycle gap "
                f"{outage['outage_gap_s']} s over {outage['outage_cycles']} cycles; "
                f"baseline {outage['baseline_gap_s']} s over "
                f"{outage['baseline_cycles']} cycles before it (goal <= 2 intervals = 2 s on dev); "
                f"60 s after: gap {outage['after_gap_s']} s, bot run {outage['run_state_after']}, "
                f"holder changed: {outage['holder_changed']}"
            )
        if args.zombie:
            zombie_s, note = measure_zombie(stack)
            figures["zombie_s"] = round(zombie_s, 2)
            print(
                f"zombie: bot process SIGSTOPped (heartbeats every {BOT_HEARTBEAT_SECONDS} s stop) -> another run "
                f"trading after {zombie_s:.1f} s ({note}); expected <= {ZOMBIE_AFTER_SECONDS} s window + trigger "
                "evaluation + TTL/3 renewal check + start"
            )
        found, summary = duplicates(stack)
        figures["duplicate_orders"] = found
        print(f"duplicates: {found} ({summary})")
    finally:
        stack.stop()
    if args.skip_standby:
        figures["takeover_s"], note = None, "skipped"
    else:
        takeover, note = measure_takeover(folder, env)
        figures["takeover_s"] = round(takeover, 2) if takeover is not None else None
    print(f"takeover: {figures['takeover_s']} s ({note})")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    keys = ("restart_s_p50", "restart_s_max", "outage_max_gap_s", "takeover_s", "duplicate_orders")
    print(json.dumps({key: figures.get(key) for key in keys}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
