"""perps-bot up: a local Prefect server (SQLite), every deployment of prefect.yaml served, the bots running.

The bots are the deployments serve_all.bot_deployment_names() lists: one `trading-bot/<account>` per account
ACCOUNTS_FILE declares, or `trading-bot/paper` without the file. With `--workers N` the same deployments run the
production way instead of served: the server (on the ledger's PostgreSQL when it is one), the `gpt-trader` process
pool and N Prefect workers (deployments/workers.py).

`up` supervises what it starts. A server or runner that dies is started again with backoff (1, 2, 4 ... 30 s) while
the bot trades on; SIGTERM or SIGINT stops the bot between cycles, then the runner, then the server, and leaves no
process behind. `up` makes itself the child subreaper of its tree, so a flow-run process orphaned by a dead runner
is re-parented to `up`, not to init: it is still found (and stopped) as one of `up`'s descendants.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from deployments import forkserver
from deployments import workers as worker_layout
from trader.fsio import atomic_write
from trader.settings import Settings

out = Console(highlight=False)
BOT_DEPLOYMENT = "trading-bot/paper"  # the one bot without an accounts file
UP_FILE = Path("var") / "prefect" / "up.json"
BACKOFF_CAP_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 60.0  # a part that ran this long before dying restarts after 1 s again
STOP_BUDGET_SECONDS = 55.0  # SIGTERM of `up` to nothing left: within a supervisor's usual 60 s


# A run of a deployment whose concurrency slot is taken (a bot's restart while the crashed run still holds it) is
# set AwaitingConcurrencySlot and tried again after this many seconds: part of every restart's and failover's time.
SLOT_WAIT_VARIABLE = "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS"
SLOT_WAIT_SECONDS = "5"


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
            # a restart that finds its crashed run's slot not yet released asks again in 5 s, not Prefect's 30
            SLOT_WAIT_VARIABLE: SLOT_WAIT_SECONDS,
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "1",
        }
    )
    return env


def _ensure_automations(env: dict[str, str]) -> None:
    """`python -m deployments.automations`: the zombie and restart automations that supervise the bot
    (docs/supervision.md), and with Slack configured the one that reports Crashed runs even when a process worker
    skips the flow's own hooks (PrefectHQ/prefect#22766). Idempotent."""
    result = subprocess.run(
        [sys.executable, "-m", "deployments.automations"], env=env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-300:]
        out.print(
            f"[red]python -m deployments.automations failed; without the zombie and restart automations a crashed "
            f"bot is not restarted (check them in the UI, Automations): {detail}[/]"
        )


def api_healthy(port: int, timeout: float = 2) -> bool:
    """True when the server's /api/health answers 200 within the timeout."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for_api(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Block until the server's /api/health answers; raise with the log's tail if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Prefect server exited with code {process.returncode}")
        if api_healthy(port):
            return
        time.sleep(0.5)
    raise RuntimeError(f"Prefect server on 127.0.0.1:{port} did not answer /api/health within {timeout:.0f} s")


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def bot_deployments(settings: Settings) -> dict[str, str]:
    """deployment name -> the account its bot trades: trading-bot/<account> for each declared account, or
    trading-bot/paper -> the environment's ACCOUNT."""
    from deployments.serve_all import BOT_ENTRYPOINT, deployment_entries

    return {
        f"trading-bot/{entry['name']}": str((entry.get("parameters") or {}).get("account") or settings.account)
        for entry in deployment_entries(settings=settings)
        if entry["entrypoint"] == BOT_ENTRYPOINT
    }


def start_bot_run(profile: str, env: dict[str, str], timeout: float = 120, deployment: str = BOT_DEPLOYMENT) -> str:
    """Trigger the bot deployment once the runner (or `prefect deploy`) has registered it; return the flow run id.

    An account's own profile (its `profile:` in ACCOUNTS_FILE) still wins over this one in the run itself."""
    os.environ.update({k: env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME")})
    from prefect.deployments import run_deployment

    deadline = time.monotonic() + timeout
    while True:
        try:
            run = run_deployment(deployment, parameters={"profile": profile}, timeout=0)
            return str(run.id)  # type: ignore[union-attr]  # sync call returns a FlowRun
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


# --- processes (Linux /proc; no psutil in the venv) -----------------------------------------------------------------


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphans of our descendants are re-parented to this process instead of init."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(36, 1, 0, 0, 0)) == 0  # 36 = PR_SET_CHILD_SUBREAPER


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process visible in /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int, table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    """Every live (non-zombie) process below pid, parents before children."""
    table = _proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for child, (parent, _state) in table.items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        current = queue.pop(0)
        if table[current][1] != "Z":
            found.append(current)
        queue.extend(children.get(current, []))
    return found


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_gone(pids: list[int], deadline: float, managed: set[int]) -> list[int]:
    """Poll until every pid is gone or the deadline passes; return the survivors."""
    while True:
        reap_adopted(managed)
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def reap_adopted(managed: set[int]) -> None:
    """Collect exited orphans re-parented to us (a subreaper must, or they stay zombies holding their pid);
    the Popen objects in `managed` reap their own."""
    me = os.getpid()
    for pid, (parent, state) in _proc_table().items():
        if parent == me and state == "Z" and pid not in managed:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


LOGGING_MARK = "# written by perps-bot up: console logging that survives a dead runner (delete to customise)"


def write_logging_config(home: Path) -> None:
    """PREFECT_HOME/logging.yml for every process of the stack: Prefect's own, with a plain console handler.

    A flow run's stderr is a pipe to the runner. When the runner dies, Prefect's rich console handler meets
    BrokenPipeError and rich answers with SystemExit(1): the bot would crash with its runner. logging.StreamHandler
    swallows the error instead, and the bot trades on until a new runner is up. A file without our mark is kept.
    """
    import importlib.util

    import yaml

    # Found without importing prefect: an import here would freeze Prefect's settings before PREFECT_API_URL is set.
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.submodule_search_locations
    default = Path(next(iter(spec.submodule_search_locations))) / "logging" / "logging.yml"
    path = home / "logging.yml"
    if path.exists() and not path.read_text().startswith(LOGGING_MARK):
        return
    config = yaml.safe_load(default.read_text())
    config["handlers"]["console"] = {
        "level": 0,
        "class": "logging.StreamHandler",
        "formatter": "standard",
        "stream": "ext://sys.stderr",
    }
    path.write_text(f"{LOGGING_MARK}\n{yaml.safe_dump(config, sort_keys=False)}")


class StopRequested(BaseException):
    """The first SIGTERM or SIGINT to `up`: unwinds whatever `up` is doing into the ordered stop."""


@dataclass
class Part:
    """A supervised child of `up`: the Prefect server, the runner, or a worker (its own env, folder, health port)."""

    name: str
    module_args: list[str]
    log_file: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    health_port: int | None = None
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0  # deaths in a row that came soon after a start; drives the backoff
    restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class EmbeddedStack:
    """The server, the runner (or the workers) and the bot runs that one `perps-bot up` owns."""

    settings: Settings
    port: int
    start_bot: bool
    root: Path
    workers: int = 0
    run_ids: dict[str, str] = field(default_factory=dict)  # bot deployment -> its run
    adopted_pids: list[int] = field(default_factory=list)
    stopping: str | None = None
    armed: bool = True
    parts: list[Part] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home = (self.root / "var" / "prefect").resolve()
        self.logs = (self.root / "var" / "logs").resolve()
        self.env = prefect_env(self.home, self.port)
        self.api_url = self.env["PREFECT_API_URL"]
        self.up_file = (self.root / UP_FILE).resolve()
        self.bots = bot_deployments(self.settings)
        self.prefect_database: str | None = None
        self.server = Part(
            "Prefect server",
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            self.logs / "prefect-server.log",
        )
        self.runner: Part | None = None
        self.worker_parts: list[Part] = []
        self.fork_servers: list[Part] = []  # one per worker: its flow runs are forks of it (deployments/forkserver.py)
        if self.workers:
            self.prefect_database = worker_layout.prefect_database_url(self.settings.database_url)
            if self.prefect_database is not None:
                self.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.prefect_database
            shared = worker_layout.machine_env(self.settings, self.root)
            self.env.update(shared)  # `prefect deploy` resolves GPT_TRADER_HOME; bots started here read the same
            for index in range(1, self.workers + 1):
                folder = worker_layout.worker_folder(self.root, index)
                port = worker_layout.free_port()
                env = worker_layout.worker_env(self.env, shared, folder, port)  # the worker's and its fork server's
                self.fork_servers.append(
                    Part(
                        f"fork server w{index}",
                        worker_layout.fork_server_args(folder),
                        folder / "forkserver.log",
                        env=env,
                        cwd=folder,
                    )
                )
                self.worker_parts.append(
                    Part(
                        f"worker {worker_layout.worker_name(index)}",
                        worker_layout.worker_args(index),
                        folder / "worker.log",
                        env=env,
                        cwd=folder,
                        health_port=port,
                    )
                )
            self.clients = [*self.worker_parts, *self.fork_servers]  # stopped in this order
        else:
            self.runner = Part("runner", ["deployments.serve_all"], self.logs / "serve.log")
            self.clients = [self.runner]
        self.parts = [self.server, *self.clients]

    @property
    def run_id(self) -> str | None:
        """The first bot's run (up.json's flow_run_id, as before accounts)."""
        return next(iter(self.run_ids.values()), None)

    # --- the command ------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, supervise until SIGTERM/SIGINT, then stop everything; 0 after a signal."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        # This process's own Prefect client (start_bot_run) reads its settings once, at the first prefect import.
        os.environ.update({name: self.env[name] for name in ("PREFECT_API_URL", "PREFECT_HOME")})
        write_logging_config(self.home)
        if not become_subreaper():
            self._log("[yellow]not a child subreaper here: a flow run orphaned by a dead runner may outlive up[/]")
        code = 0
        try:
            self._start()
            self._supervise()
        except StopRequested:
            self.armed = False
        except Exception as error:  # a start that failed: say why, then stop what did start
            self.armed = False
            self._log(f"[red]perps-bot up: {error}[/]")
            code = 1
        finally:
            self.armed = False
            self._stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return code

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stopping is None:
            self.stopping = signal.Signals(signum).name
            if self.armed:
                raise StopRequested(self.stopping)
        # A second signal changes nothing: the stop already runs against its own deadline.

    def _start(self) -> None:
        database = "SQLite"
        if self.prefect_database is not None:
            worker_layout.ensure_prefect_database(self.settings.database_url)
            database = f"PostgreSQL database {self.prefect_database.rsplit('/', 1)[-1]}"
        with out.status(f"starting the Prefect server on 127.0.0.1:{self.port} (first start migrates {database})"):
            self._spawn(self.server)
            wait_for_api(self.port, timeout=180, process=self.server.process)
        self._write_up_file()  # status can find the stack while the rest starts
        out.print(f"Prefect UI: http://127.0.0.1:{self.port} on {database}  (logs in {self.logs})")
        if self.start_bot and self.settings.metrics_enabled and self.bots == {BOT_DEPLOYMENT: self.settings.account}:
            exporter = f"http://{self.settings.metrics_host}:{self.settings.metrics_port}"
            out.print(f"bot metrics: {exporter}/metrics, health: {exporter}/health (served by the trading-bot run)")
        if self.workers:
            self._start_workers()
        else:
            with out.status("registering and serving the deployments of prefect.yaml"):
                assert self.runner is not None
                self._spawn(self.runner)
                _ensure_automations(self.env)
        if self.start_bot:
            with out.status(f"starting {', '.join(self.bots)}"):
                for deployment, account in self.bots.items():
                    run_id = self._live_bot_run(account) or start_bot_run(
                        self.settings.profile, self.env, deployment=deployment
                    )
                    self.run_ids[deployment] = run_id
        self._write_up_file()
        for deployment, run_id in self.run_ids.items():
            out.print(f"{deployment} running in paper mode: http://127.0.0.1:{self.port}/runs/flow-run/{run_id}")
        logs = "var/workers/w<i>/logs" if self.workers else str(self.settings.log_dir)
        out.print(
            f"bot logs: {logs}; state: {self.settings.state_dir}; "
            "Ctrl-C or SIGTERM stops everything; perps-bot status shows each part"
        )

    def _start_workers(self) -> None:
        """The production layout's order (docs/deploy.md): pool, automations, deployments, then the workers."""
        with out.status(f"work pool {worker_layout.WORK_POOL}, automations, prefect deploy --all"):
            worker_layout.create_work_pool(self.env)
            _ensure_automations(self.env)
            names = worker_layout.deploy_for_workers(self.env, self.settings, self.root)
        out.print(f"deployed for the {worker_layout.WORK_POOL} pool: {len(names)} deployments")
        with out.status(f"starting {self.workers} worker(s) and their fork servers"):
            for part in self.fork_servers:
                assert part.cwd is not None
                part.cwd.mkdir(parents=True, exist_ok=True)
                self._spawn(part)
            for part in self.fork_servers:  # ready before the workers, so the first bots are forks too
                assert part.cwd is not None
                if not forkserver.wait_ready(worker_layout.fork_server_socket(part.cwd), part.running):
                    raise RuntimeError(f"{part.name} did not become ready; see {part.log_file}")
            for part in self.worker_parts:
                assert part.cwd is not None
                part.cwd.mkdir(parents=True, exist_ok=True)
                self._spawn(part)
            for part in self.worker_parts:
                assert part.health_port is not None
                deadline = time.monotonic() + 120
                while not worker_layout.worker_healthy(part.health_port):
                    if not part.running() or time.monotonic() > deadline:
                        raise RuntimeError(f"{part.name} did not become healthy; see {part.log_file}")
                    time.sleep(0.5)
                out.print(f"{part.name}: pid {part.pid}, health http://127.0.0.1:{part.health_port}/health")

    def _supervise(self) -> None:
        """Restart a dead server, runner or worker with backoff; the bots' flow-run processes trade on."""
        while True:
            reap_adopted(self._managed())
            for part in self.parts:
                if part.process is not None and part.process.poll() is not None:
                    self._died(part)
            now = time.monotonic()
            if self.server.restart_at is not None and now >= self.server.restart_at:
                self._restart(self.server)
            elif self.server.running():
                for part in self.clients:
                    if part.restart_at is not None and now >= part.restart_at:
                        self._restart(part)
            time.sleep(0.5)

    def _died(self, part: Part) -> None:
        assert part.process is not None
        pid, code = part.process.pid, part.process.returncode
        uptime = time.monotonic() - part.started_at
        part.quick_deaths = part.quick_deaths + 1 if uptime < HEALTHY_AFTER_SECONDS else 1
        delay = min(BACKOFF_CAP_SECONDS, 2.0 ** (part.quick_deaths - 1))
        if part is self.server:
            _kill_group(pid)  # whatever the dead server left in its group would hold the port
        # Not a runner's or worker's group: a bot's flow-run process may be in it and trades on while it is away.
        part.process = None
        part.restart_at = time.monotonic() + delay
        self._log(
            f"[yellow]{part.name} (pid {pid}) exited with code {code} after {uptime:.0f} s; "
            f"restart #{part.restarts + 1} in {delay:g} s[/]"
        )
        self._write_up_file()

    def _restart(self, part: Part) -> None:
        part.restart_at = None
        part.restarts += 1
        self._spawn(part)
        if part is self.server:
            try:
                wait_for_api(self.port, timeout=180, process=part.process)
            except RuntimeError as error:
                self._log(f"[yellow]{part.name} did not come back: {error}[/]")
                if part.running():
                    assert part.pid is not None
                    _kill_group(part.pid)
                    part.process.wait()  # type: ignore[union-attr]
                return  # the next pass sees it dead and backs off further
        self._log(f"{part.name} restarted (pid {part.pid}, restart #{part.restarts})")
        self._write_up_file()

    # --- stopping ---------------------------------------------------------------------------------------------

    def _stop(self) -> None:
        """The bots between cycles, then the runner or workers, then the server, then anything still below `up`."""
        deadline = time.monotonic() + STOP_BUDGET_SECONDS
        clients = "the workers" if self.workers else "the runner"
        self._log(f"stopping ({self.stopping or 'exit'}): the bots between cycles, then {clients}, then the server")
        if self.server.running() and api_healthy(self.port):
            # Every live bot run, not only the first: a crashed run may have been followed by a restart.
            try:
                runs = bot_runs(self.api_url, LIVE_STATES, deployments=list(self.bots)) or list(self.run_ids.values())
                budget = max(1.0, deadline - 35 - time.monotonic())
                for run_id, state in cancel_all_and_wait(runs, timeout=budget, api_url=self.api_url).items():
                    self._log(f"trading-bot run {run_id}: {state}")
            except (OSError, ValueError) as error:
                self._log(f"[yellow]could not cancel the trading-bot runs through the API: {error}[/]")
        bots = self._flow_run_pids()
        bots.extend(pid for pid in self.adopted_pids if pid_alive(pid))
        if bots:
            # The bot takes SIGTERM as "stop between cycles" (flows/bot.py StopBetweenCycles).
            _signal(bots, signal.SIGTERM)
            left = _wait_gone(bots, min(time.monotonic() + 10, deadline - 20), self._managed())
            if left:
                self._log(f"[yellow]flow-run process(es) {left} ignored SIGTERM; killing them[/]")
                _signal(left, signal.SIGKILL)
        for part in self.clients:
            self._stop_part(part, min(time.monotonic() + 10, deadline - 10))
        self._stop_part(self.server, min(time.monotonic() + 10, deadline - 3))
        left = descendants(os.getpid())
        if left:
            _signal(left, signal.SIGTERM)
            left = _wait_gone(left, min(time.monotonic() + 3, deadline), self._managed())
            _signal(left, signal.SIGKILL)
            _wait_gone(left, time.monotonic() + 2, self._managed())
        self.up_file.unlink(missing_ok=True)
        left = descendants(os.getpid())
        self._log(f"stopped; left running: {left}" if left else "stopped: nothing this command started is left")

    def _stop_part(self, part: Part, deadline: float) -> None:
        if not part.running():
            return
        assert part.process is not None
        # A Prefect worker stops cleanly on SIGINT (it turns SIGTERM into SIGINT itself; docs/deploy.md).
        _kill_group(part.process.pid, signal.SIGINT if part in self.worker_parts else signal.SIGTERM)
        try:
            part.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._log(f"[yellow]{part.name} (pid {part.process.pid}) outlived its grace; killing it[/]")
            _kill_group(part.process.pid)
            part.process.wait()

    def _flow_run_pids(self) -> list[int]:
        """Everything below `up` except the server's tree and the runner or workers themselves: the flow runs."""
        table = _proc_table()
        everything = descendants(os.getpid(), table)
        server = set(descendants(self.server.pid, table)) | {self.server.pid} if self.server.pid else set()
        clients = {part.pid for part in self.clients if part.pid is not None}
        return [pid for pid in everything if pid not in server and pid not in clients]

    # --- helpers ----------------------------------------------------------------------------------------------

    def _live_bot_run(self, account: str) -> str | None:
        """The account's trading-bot run still trading from an earlier `up` (its lease fresh, its run Running).

        Starting another would only be refused by the lease; the stack adopts the live one instead.
        """
        url = self.settings.database_url
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            return None
        from trader.ledger import Ledger

        ledger = Ledger(url, account=account, migrate=False)
        try:
            lease = ledger.current_lease(account)
        except Exception:  # an old or empty ledger: nothing to adopt
            return None
        finally:
            ledger.dispose()
        if lease is None or lease.expired() or not lease.holder.flow_run_id:
            return None
        try:
            run = api_json(f"{self.api_url}/flow_runs/{lease.holder.flow_run_id}")
        except (OSError, ValueError):
            return None
        if not isinstance(run, dict) or (run.get("state") or {}).get("type") != "RUNNING":
            return None
        self._log(
            f"trading-bot run {run['id']} is still trading ({lease.holder.describe()}, renewed "
            f"{lease.seconds_since_renewal():.0f} s ago): adopted, no second run started"
        )
        if lease.holder.on_this_node() and pid_alive(lease.holder.pid):
            # Not below this `up`, but the bot of this folder's ledger and Prefect database: stopped with the stack.
            self.adopted_pids.append(lease.holder.pid)
        return str(run["id"])

    def _spawn(self, part: Part) -> None:
        part.process = spawn(part.module_args, part.log_file, part.env or self.env, part.cwd or self.root)
        part.started_at = time.monotonic()

    def _managed(self) -> set[int]:
        return {part.pid for part in self.parts if part.pid is not None}

    def _write_up_file(self) -> None:
        """var/prefect/up.json: what `perps-bot status` needs to find this stack (port, pids, the bot run)."""
        record = {
            "pid": os.getpid(),
            "port": self.port,
            "api_url": self.api_url,
            "ui_url": f"http://127.0.0.1:{self.port}",
            "server_pid": self.server.pid if self.server.running() else None,
            "runner_pid": self.runner.pid if self.runner is not None and self.runner.running() else None,
            "flow_run_id": self.run_id,
            "bots": self.run_ids,
            "workers": [
                {
                    "name": part.name.removeprefix("worker "),
                    "pid": part.pid if part.running() else None,
                    "health_port": part.health_port,
                    "folder": str(part.cwd),
                    "restarts": part.restarts,
                    "fork_server_pid": fork.pid if fork.running() else None,
                }
                for part, fork in zip(self.worker_parts, self.fork_servers, strict=True)
            ],
            "prefect_database": "postgresql" if self.prefect_database else "sqlite",
            "profile": self.settings.profile,
            "restarts": {"server": self.server.restarts, "runner": self.runner.restarts if self.runner else 0},
            "updated_at": datetime.now(UTC).isoformat(),
        }
        atomic_write(self.up_file, json.dumps(record, indent=2), mode=0o644)

    def _log(self, message: str) -> None:
        """A supervisor event: on the console and in var/logs/up.log."""
        out.print(message, soft_wrap=True)
        plain = Console(file=None, highlight=False).render_str(message).plain
        with (self.logs / "up.log").open("a") as log:
            log.write(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}Z {plain}\n")


def run_embedded_stack(settings: Settings, *, port: int = 4200, start_bot: bool = True, workers: int = 0) -> int:
    """Start server, runner (or `workers` Prefect workers) and the bots and supervise them; SIGTERM or Ctrl-C stops
    everything this command started."""
    from trader.accounts import declared

    if settings.broker_kind != "simulated":
        out.print("[red]perps-bot up runs the paper stack; unset the Coinbase credentials or set BROKER=simulated[/]")
        return 2
    live = [spec.name for spec in declared(settings) or [] if spec.broker != "simulated"]
    if live:
        out.print(
            f"[red]perps-bot up runs the paper stack; account(s) {', '.join(live)} in {settings.accounts_file} "
            "trade on Coinbase: deploy them for workers (docs/deploy.md) or declare them broker: simulated[/]"
        )
        return 2
    if workers < 0:
        out.print(f"[red]--workers: {workers} is not a number of workers; give 1 or more[/]")
        return 2
    if port_in_use(port):
        out.print(f"[red]127.0.0.1:{port} is already in use; stop what runs there or pass --port[/]")
        return 2
    return EmbeddedStack(settings, port, start_bot, Path.cwd(), workers=workers).run()


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
REQUEST_TIMEOUT_SECONDS = 5.0
LIVE_STATES = ("SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED")


def api_json(url: str, body: dict | None = None, timeout: float = 3) -> dict | list:
    """GET (or POST body as JSON) one Prefect REST endpoint with a short timeout; OSError when it does not answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def bot_runs(
    api_url: str, states: tuple[str, ...] | None = None, limit: int = 200, deployments: list[str] | None = None
) -> list[str]:
    """Ids of the bot deployments' runs (in these states; default trading-bot/paper), newest first; [] when none
    of the deployments is registered. The limit is the server's page maximum: with many accounts every live run
    must be found (stopping `up` cancels each)."""
    api = api_url.rstrip("/")
    ids = []
    for name in deployments or [BOT_DEPLOYMENT]:
        try:
            deployment = api_json(f"{api}/deployments/name/{name}", timeout=REQUEST_TIMEOUT_SECONDS)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                continue
            raise
        assert isinstance(deployment, dict)
        ids.append(deployment["id"])
    if not ids:
        return []
    flow_runs: dict[str, Any] = {"deployment_id": {"any_": ids}}
    if states:
        flow_runs["state"] = {"type": {"any_": list(states)}}
    runs = api_json(
        f"{api}/flow_runs/filter",
        {"flow_runs": flow_runs, "sort": "EXPECTED_START_TIME_DESC", "limit": limit},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )
    return [str(run["id"]) for run in runs] if isinstance(runs, list) else []


def cancel_all_and_wait(run_ids: list[str], timeout: float = 40, api_url: str | None = None) -> dict[str, str]:
    """Cancel every run at once (each bot stops between its own cycles), then wait for each; run id -> final state."""
    from concurrent.futures import ThreadPoolExecutor

    if not run_ids:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(run_ids))) as pool:
        states = pool.map(lambda run_id: cancel_and_wait(run_id, timeout=timeout, api_url=api_url), run_ids)
        return dict(zip(run_ids, states, strict=True))


def cancel_and_wait(run_id: str, timeout: float = 40, api_url: str | None = None) -> str:
    """Cancel the flow run as the UI does and wait until it is final; the bot stops between cycles.

    A slow answer is retried until the deadline (a server under load, or just restarted, may take seconds);
    OSError only when the API never answered at all.
    """
    api = (api_url or os.environ["PREFECT_API_URL"]).rstrip("/")
    deadline = time.monotonic() + timeout
    state: str | None = None
    asked, answered, error = False, False, None
    while True:
        try:
            run = api_json(f"{api}/flow_runs/{run_id}", timeout=REQUEST_TIMEOUT_SECONDS)
            answered = True
            state = (run.get("state") or {}).get("type") if isinstance(run, dict) else None
            if state is None or state in FINAL_STATES:
                break
            if not asked:
                # Only a running process can act on Cancelling; a run that never started goes straight to Cancelled.
                target = "CANCELLING" if state in ("RUNNING", "CANCELLING") else "CANCELLED"
                api_json(
                    f"{api}/flow_runs/{run_id}/set_state",
                    {"state": {"type": target, "name": target.title()}, "force": True},
                    timeout=REQUEST_TIMEOUT_SECONDS,
                )
                asked = True
        except (OSError, ValueError) as failure:
            error = failure
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if not answered and error is not None:
        raise OSError(f"the Prefect API did not answer within {timeout:.0f} s: {error}")
    return state.lower() if state else "unknown"


def _kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


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
    for child in reversed(children):
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
