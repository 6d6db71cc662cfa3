"""`perps-bot up --workers N`: the production layout of docs/deploy.md on one machine.

The parts, in the order an operator sets them up: the Prefect server on the machine's PostgreSQL (a database
`<ledger database>_prefect` beside the ledger, created if missing; SQLite in PREFECT_HOME when the ledger is SQLite),
the process work pool `gpt-trader`, the automations, the deployments registered for workers exactly as operators do
(`perps-bot accounts deployments`' prefect file, then `prefect deploy --all --prefect-file`), and N
`prefect worker start --pool gpt-trader --name <host>-w<i> --with-healthcheck`.

Each worker has its own working directory `var/workers/w<i>`, LOG_DIR `var/workers/w<i>/logs` and health port. They
share the stack's STATE_DIR, as machines share the ledger and the cold tier: a paper account's simulated exchange,
its heartbeat and the kill-switch flag files live there, and a bot restarted on the other worker must find them (one
bot per account at a time: the lease). Every path a worker passes on is absolute: its flow runs `cd` into the
checkout (GPT_TRADER_HOME, prefect.yaml's pull step), not into the worker's folder.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from sqlalchemy.engine import make_url

from deployments import forkserver
from deployments.serve_all import PROJECT_ROOT, write_prefect_file
from trader.settings import Settings

WORK_POOL = "gpt-trader"
WORKERS_DIR = Path("var") / "workers"
DEPLOY_FILE = Path("var") / "prefect" / "prefect.accounts.yaml"
WORKER_QUERY_SECONDS = "2"  # Prefect's default is 10 s: a bot restarted by the automation waits up to that long


class WorkersError(RuntimeError):
    """A step of the worker layout failed; the message names the step and the command's last output."""


def prefect_database_url(ledger_url: str) -> str | None:
    """The Prefect server's database beside a PostgreSQL ledger (`<ledger>_prefect`, asyncpg), or None for SQLite."""
    url = make_url(ledger_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql+asyncpg", database=f"{url.database}_prefect").render_as_string(
        hide_password=False
    )


def ensure_prefect_database(ledger_url: str) -> str | None:
    """Create the Prefect database beside a PostgreSQL ledger when it is missing; its asyncpg URL, or None."""
    prefect_url = prefect_database_url(ledger_url)
    if prefect_url is None:
        return None
    from sqlalchemy import create_engine, text

    name = make_url(prefect_url).database
    engine = create_engine(ledger_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            if exists is None:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return prefect_url


def absolute_url(url: str, root: Path) -> str:
    """A SQLite URL or a plain folder with its relative path made absolute against root; other URLs unchanged."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{(root / url.removeprefix('sqlite:///')).resolve().as_posix()}"
    if "://" not in url:
        return (root / url).resolve().as_posix()
    return url


def machine_env(settings: Settings, root: Path) -> dict[str, str]:
    """What every worker (and so every flow run) shares: the stack's STATE_DIR, ledger, cold tier, accounts file."""
    env = {
        "STATE_DIR": str((root / settings.state_dir).resolve()),
        "DATABASE_URL": absolute_url(settings.database_url, root),
        "COLD_STORAGE_URL": absolute_url(settings.cold_storage_url, root),
        "GPT_TRADER_HOME": str(PROJECT_ROOT),
    }
    accounts = root / settings.accounts_file
    if accounts.exists():
        env["ACCOUNTS_FILE"] = str(accounts.resolve())
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_name(index: int) -> str:
    return f"{socket.gethostname()}-w{index}"


def worker_folder(root: Path, index: int) -> Path:
    return (root / WORKERS_DIR / f"w{index}").resolve()


def worker_args(index: int) -> list[str]:
    """`prefect worker start` as docs/deploy.md runs it, as `python -m` arguments."""
    return ["prefect", "worker", "start", "--pool", WORK_POOL, "--name", worker_name(index), "--with-healthcheck"]


def fork_server_socket(folder: Path) -> Path:
    """The Unix socket of the fork server beside a worker (deployments/forkserver.py)."""
    return folder / "fork.sock"


def fork_server_args(folder: Path) -> list[str]:
    """The fork server of the worker in `folder`, as `python -m` arguments."""
    return ["deployments.forkserver", "serve", "--socket", str(fork_server_socket(folder))]


def worker_env(stack_env: dict[str, str], shared: dict[str, str], folder: Path, health_port: int) -> dict[str, str]:
    """One worker's environment: the stack's, the machine's shared files, its own logs, health port and fork server.

    prefect.yaml's job command is `python -m deployments.forkserver launch`: this interpreter's folder goes first
    on PATH so `python` is the one with the project installed."""
    env = {**stack_env, **shared}
    env.update(
        {
            "LOG_DIR": str(folder / "logs"),
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(health_port),
            "PYTHONPATH": str(PROJECT_ROOT),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), stack_env.get("PATH", os.defpath)]),
            forkserver.SOCKET_ENV: str(fork_server_socket(folder)),
        }
    )
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", WORKER_QUERY_SECONDS)
    return env


def worker_healthy(port: int, timeout: float = 2) -> bool:
    """True when the worker's health server (--with-healthcheck) answers 200: it polled the pool recently."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _prefect(args: list[str], env: dict[str, str], what: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip())[-400:]
        raise WorkersError(f"{what} failed (prefect {' '.join(args)}): {detail}")
    return result.stdout


def create_work_pool(env: dict[str, str]) -> None:
    """`prefect work-pool create gpt-trader --type process`; a pool left by an earlier start is kept."""
    try:
        _prefect(["work-pool", "create", WORK_POOL, "--type", "process"], env, "creating the work pool")
    except WorkersError as error:
        if "already exists" not in str(error):
            raise


def deploy_for_workers(env: dict[str, str], settings: Settings, root: Path) -> list[str]:
    """The deployments of prefect.yaml, one trading-bot/<account> per declared account, registered on the pool as
    operators do: the prefect file `perps-bot accounts deployments` writes, then `prefect deploy --all
    --prefect-file` (from the checkout, with GPT_TRADER_HOME the checkout). Returns the deployment names."""
    path = (root / DEPLOY_FILE).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = write_prefect_file(path, settings)
    _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", str(path)], env, "prefect deploy")
    return [str(entry["name"]) for entry in entries]
