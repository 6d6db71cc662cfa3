"""perps-bot up: a local Prefect server (SQLite), every deployment of prefect.yaml served, the bot running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rich.console import Console

from trader.settings import Settings

out = Console(highlight=False)
BOT_DEPLOYMENT = "trading-bot/paper"


def prefect_env(home: Path, port: int) -> dict[str, str]:
    """Environment for every process of the embedded stack: its own PREFECT_HOME and API URL."""
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "1",
        }
    )
    return env


def _ensure_crash_automation(env: dict[str, str]) -> None:
    """The automation that reports Crashed runs even when a process worker skips the flow's own hooks
    (PrefectHQ/prefect#22766); without Slack settings there is nothing to notify and nothing is created."""
    result = subprocess.run(
        [sys.executable, "-m", "deployments.automations"], env=env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        out.print(f"[yellow]crash automation not created: {(result.stderr or result.stdout).strip()[-300:]}[/]")


def wait_for_api(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Block until the server's /api/health answers; raise with the log's tail if it never does."""
    url = f"http://127.0.0.1:{port}/api/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Prefect server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"Prefect server on 127.0.0.1:{port} did not answer {url} within {timeout:.0f} s")


def port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_bot_run(profile: str, env: dict[str, str], timeout: float = 120) -> str:
    """Trigger trading-bot/paper once the runner has registered it; return the flow run id."""
    os.environ.update({k: env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME")})
    from prefect.deployments import run_deployment

    deadline = time.monotonic() + timeout
    while True:
        try:
            run = run_deployment(BOT_DEPLOYMENT, parameters={"profile": profile}, timeout=0)
            return str(run.id)  # type: ignore[union-attr]  # sync call returns a FlowRun
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def run_embedded_stack(settings: Settings, *, port: int = 4200, start_bot: bool = True) -> int:
    """Start server, runner and bot; Ctrl-C stops everything this command started."""
    if settings.broker_kind != "simulated":
        out.print("[red]perps-bot up runs the paper stack; unset the Coinbase credentials or set BROKER=simulated[/]")
        return 2
    if port_in_use(port):
        out.print(f"[red]127.0.0.1:{port} is already in use; stop what runs there or pass --port[/]")
        return 2
    root = Path.cwd()
    home = (root / "var" / "prefect").resolve()
    logs = (root / "var" / "logs").resolve()
    home.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = prefect_env(home, port)
    children: list[subprocess.Popen] = []
    run_id: str | None = None
    try:
        with out.status(f"starting the Prefect server on 127.0.0.1:{port} (first start migrates SQLite, ~20 s)"):
            server = spawn(
                ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                logs / "prefect-server.log",
                env,
                root,
            )
            children.append(server)
            wait_for_api(port, timeout=180, process=server)
        out.print(f"Prefect UI: http://127.0.0.1:{port}  (logs in {logs})")
        if start_bot and settings.metrics_enabled:
            exporter = f"http://{settings.metrics_host}:{settings.metrics_port}"
            out.print(f"bot metrics: {exporter}/metrics, health: {exporter}/health (served by the trading-bot run)")
        with out.status("registering and serving the deployments of prefect.yaml"):
            runner = spawn(["deployments.serve_all"], logs / "serve.log", env, root)
            children.append(runner)
            _ensure_crash_automation(env)
            if start_bot:
                run_id = start_bot_run(settings.profile, env)
        if start_bot:
            out.print(f"trading-bot running in paper mode: http://127.0.0.1:{port}/runs/flow-run/{run_id}")
        out.print(f"bot log: {settings.log_file}; state: {settings.state_dir}; press Ctrl-C to stop everything")
        while all(child.poll() is None for child in children):
            time.sleep(1)
        failed = next(child for child in children if child.poll() is not None)
        out.print(f"[red]{failed.args!r} exited with code {failed.returncode}; stopping[/]")
        return 1
    except KeyboardInterrupt:
        out.print("stopping: the bot between cycles, then the runner, then the server")
        if run_id is not None:
            cancel_and_wait(run_id)
        return 0
    finally:
        stop_children(children)


def cancel_and_wait(run_id: str, timeout: float = 40) -> str:
    """Cancel the flow run as the UI does and wait until it is final; the bot stops between cycles."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(run_id)).state
        if state is not None and not state.is_final():
            client.set_flow_run_state(UUID(run_id), Cancelling(), force=True)
        while state is not None and not state.is_final() and time.monotonic() < deadline:
            time.sleep(0.5)
            state = client.read_flow_run(UUID(run_id)).state
    return state.type.value if state is not None else "unknown"


def spawn(module_args: list[str], log_file: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start `python -m ...` in its own process group, output appended to log_file."""
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", *module_args],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_children(children: list[subprocess.Popen], grace: float = 40) -> None:
    """SIGTERM in reverse start order, SIGKILL whatever outlives the grace period."""
    import signal

    for child in reversed(children):
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
