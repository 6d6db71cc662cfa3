"""How fast a runbook flow starts on the embedded stack: `prefect deployment run 'daily-checklist/daily' --watch`.

    .venv/bin/python bench/deploy_run.py [--runs 5] [--no-bot] [--keep]

Starts `perps-bot up` (paper, SQLite ledger, the bot trading unless --no-bot) in a scratch folder on free loopback
ports, waits by polling until the server answers and the runner has registered the deployment (and, with the bot,
until the bot has cycled), then runs the CLI command --runs times, one after the other. Figures per run: the
command's wall time (process start to exit: the CLI's own import, the API call, the runner picking the run up, the
flow-run process starting, the flow itself, the watch noticing the end), and the server's view of the same run,
created -> end time, read from the API. Prints the median of each; `up` is stopped with SIGTERM (its process group,
which it started, only if it outlives the stop budget). The last line is one JSON object: deploy_run_s_p50,
server_s_p50 and every run's figures. Goal: deploy_run_s_p50 <= 5 s on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
DEPLOYMENT = "daily-checklist/daily"
RUN_ID = re.compile(r"UUID:\s*([0-9a-f-]{36})")
STOP_BUDGET_SECONDS = 60.0  # `up` stops everything within its own 55 s budget


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_env(metrics_port: int) -> dict[str, str]:
    """This environment without Prefect or bot settings of its own, plus the paper stack's."""
    from trader.settings import Settings

    own = {name.upper() for name in Settings.model_fields} | {
        "COINBASE_API_KEY",
        "COINBASE_API_SECRET",
        "COINBASE_KEY_FILE",
        "PERPS_PROFILE",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k not in own}
    env.update(
        {
            "BROKER": "simulated",
            "METRICS_ENABLED": "1",
            "METRICS_PORT": str(metrics_port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def api(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST body as JSON) one Prefect REST endpoint; None when it does not answer 2xx."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")
    except (OSError, ValueError):
        return None


def wait_for(condition: Callable[[], Any], timeout: float, what: str, process: subprocess.Popen[bytes]) -> Any:
    """Poll every 0.2 s until `condition` is truthy; fail if `up` exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"perps-bot up exited with code {process.returncode} while waiting for {what}")
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"{what} not seen within {timeout:.0f} s")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def bot_cycled(cwd: Path) -> bool:
    """The bot's heartbeat file names a cycle: it has traded at least once."""
    try:
        heartbeat = json.loads((cwd / "var" / "state" / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(heartbeat.get("cycles"))


def run_once(api_url: str, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """One `prefect deployment run ... --watch`: its wall time, and the run's created -> end time on the server."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, "--watch"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - started
    output = done.stdout + done.stderr
    found = RUN_ID.search(output)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"prefect deployment run exited {done.returncode}: {output[-1500:]}")
    run = api(f"{api_url}/flow_runs/{found.group(1)}")
    if not run or not run.get("end_time"):
        raise RuntimeError(f"flow run {found.group(1)} has no end time: {run}")
    created, start, end = parse_time(run["created"]), parse_time(run["start_time"]), parse_time(run["end_time"])
    return {
        "flow_run_id": found.group(1),
        "state": run["state_type"],
        "wall_s": round(wall, 2),
        "server_s": round((end - created).total_seconds(), 2),
        "queued_s": round((start - created).total_seconds(), 2),  # created -> the flow-run process running
        "flow_s": round((end - start).total_seconds(), 2),
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM `up` (it stops its runner, server and flow runs); its own process group if it outlives the budget."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_BUDGET_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the session `up` was started in, and nothing else
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-bot", action="store_true", help="serve the deployments without the trading bot")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs in var/logs)")
    args = parser.parse_args()
    cwd = Path(tempfile.mkdtemp(prefix="deploy-run-"))
    port, metrics_port = free_port(), free_port()
    env = stack_env(metrics_port)
    api_url = f"http://127.0.0.1:{port}/api"
    cli_env = {**env, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(cwd / "var" / "prefect")}
    command = [str(BIN / "perps-bot"), "up", "--port", str(port), *(["--no-bot"] if args.no_bot else [])]
    print(
        f"workload: {' '.join(command[1:])} in {cwd} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); "
        f"then `prefect deployment run '{DEPLOYMENT}' --watch` x {args.runs}, one after the other",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    with (cwd / "up.out").open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        began = time.monotonic()
        name = urllib.parse.quote(DEPLOYMENT)
        wait_for(lambda: api(f"{api_url}/health"), 240, "the Prefect server's /api/health", process)
        wait_for(lambda: api(f"{api_url}/deployments/name/{name}"), 240, f"deployment {DEPLOYMENT}", process)
        if not args.no_bot:
            wait_for(lambda: bot_cycled(cwd), 240, "the bot's first cycle", process)
        print(f"stack ready after {time.monotonic() - began:.1f} s", flush=True)
        for index in range(args.runs):
            run = run_once(api_url, cli_env, cwd)
            runs.append(run)
            print(
                f"run {index + 1}: wall {run['wall_s']:.2f} s; server created -> end {run['server_s']:.2f} s "
                f"(created -> running {run['queued_s']:.2f} s, running -> end {run['flow_s']:.2f} s), "
                f"{run['state']}",
                flush=True,
            )
    finally:
        stop(process)
        if args.keep:
            print(f"kept {cwd}")
        else:
            shutil.rmtree(cwd, ignore_errors=True)
    wall_p50 = statistics.median(r["wall_s"] for r in runs)
    server_p50 = statistics.median(r["server_s"] for r in runs)
    print(
        f"{DEPLOYMENT} --watch x {len(runs)} on the embedded stack: wall p50 {wall_p50:.2f} s, "
        f"server created -> end p50 {server_p50:.2f} s; goal wall p50 <= 5 s: {'met' if wall_p50 <= 5 else 'MISSED'}"
    )
    print(
        json.dumps(
            {
                "deploy_run_s_p50": round(wall_p50, 2),
                "server_s_p50": round(server_p50, 2),
                "queued_s_p50": round(statistics.median(r["queued_s"] for r in runs), 2),
                "flow_s_p50": round(statistics.median(r["flow_s"] for r in runs), 2),
                "runs": len(runs),
                "bot": not args.no_bot,
                "wall_s": [r["wall_s"] for r in runs],
                "server_s": [r["server_s"] for r in runs],
            }
        )
    )


if __name__ == "__main__":
    main()
