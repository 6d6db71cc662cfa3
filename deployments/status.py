"""perps-bot status: one line per part of the stack; exit 0 all healthy, 1 degraded, 2 nothing reachable.

Every probe has a timeout of a few seconds, so a stopped or paused Prefect server never hangs the command. The
server is the one named by PREFECT_API_URL, else the embedded stack's (var/prefect/up.json, written by
`perps-bot up`), else 127.0.0.1:4200. The bot is judged from what it writes itself (heartbeat file, ledger lease),
so status still tells a trading bot from a dead one while the orchestrator is away.

With ACCOUNTS_FILE, each account's bot (`trading-bot/<account>`) is one line `bot:<account>`: its run, its lease,
its last cycle and its guards, at the worst of their levels; the incidents line counts every account's. Under
`perps-bot up --workers N` the runner line becomes one `worker` line per worker (its health endpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from rich.console import Console
from rich.text import Text

from deployments.embedded import BOT_DEPLOYMENT, FINAL_STATES, LIVE_STATES, UP_FILE, api_json, pid_alive
from trader.accounts import account_settings, declared, own_files
from trader.errors import ConfigError
from trader.settings import Settings

out = Console(highlight=False)
Level = Literal["OK", "WARN", "DOWN", "--"]
STYLES: dict[Level, str] = {"OK": "green", "WARN": "yellow", "DOWN": "red", "--": "dim"}
SEVERITY: dict[Level, int] = {"--": 0, "OK": 1, "WARN": 2, "DOWN": 3}
TIMEOUT_SECONDS = 2.5
RUNNER_POLL_STALE_SECONDS = 60.0
EXIT_HEALTHY, EXIT_DEGRADED, EXIT_NOTHING = 0, 1, 2


@dataclass(frozen=True)
class Line:
    """One part's verdict: OK, WARN (degraded), DOWN, or -- (not applicable here)."""

    part: str
    level: Level
    text: str


@dataclass
class Probe:
    """What the probes found, for the exit code: is anything of the stack reachable or alive?"""

    server_up: bool = False
    bot_alive: bool = False


def status_command(settings: Settings, args: argparse.Namespace | None = None) -> int:
    """Print one line per part and return 0 healthy, 1 degraded, 2 nothing reachable."""
    if args is not None and getattr(args, "action", None) is not None:
        raise ConfigError(f"status: takes no argument (got {args.action!r})")
    lines, probe = collect(settings, Path.cwd(), os.environ.get("PREFECT_API_URL"))
    for line in lines:
        out.print(
            Text.assemble(f"{line.part:<10}", (f"{line.level:<5}", STYLES[line.level]), " ", line.text),
            soft_wrap=True,
        )
    return exit_code(lines, probe)


def exit_code(lines: list[Line], probe: Probe) -> int:
    """2 when neither the server nor a live bot answers, 0 when every part is OK (or not applicable), else 1."""
    if not probe.server_up and not probe.bot_alive:
        return EXIT_NOTHING
    return EXIT_HEALTHY if all(line.level in ("OK", "--") for line in lines) else EXIT_DEGRADED


def collect(settings: Settings, root: Path, env_api_url: str | None) -> tuple[list[Line], Probe]:
    """Probe the server, runner (or workers), bot run, lease, last cycle, guards and incidents; one line per
    account's bot when accounts are declared."""
    up = read_up_file(root)
    up_alive = up is not None and isinstance(up.get("pid"), int) and pid_alive(up["pid"])
    live_up = up if up_alive else None
    api_url = (env_api_url or (up or {}).get("api_url") or "http://127.0.0.1:4200/api").rstrip("/")
    probe = Probe()
    lines = [server_line(api_url, live_up, probe)]
    bots = account_bots(settings)
    deployments = {
        name: _get(f"{api_url}/deployments/name/{quote(name)}") if probe.server_up else None for name in bots
    }
    workers = (live_up or {}).get("workers") or []
    if workers:
        lines.extend(worker_line(worker) for worker in workers)
    else:
        lines.append(runner_line(deployments, live_up, probe))
    if declared_accounts(settings) is None:  # the one bot: a line per part, as before accounts
        deployment = deployments[BOT_DEPLOYMENT]
        lines.append(bot_run_line(api_url, deployment, live_up, probe))
        heartbeat = read_heartbeat(_under(root, settings.state_dir) / "heartbeat.json")
        lines.extend(ledger_lines(settings, root, probe))
        lines.append(cycle_line(settings, heartbeat, probe))
        lines.append(guards_line(heartbeat))
    else:
        incidents = []
        for name, chosen in bots.items():
            run = bot_run_line(api_url, deployments[name], live_up, probe, deployment_name=name)
            heartbeat = read_heartbeat(_under(root, chosen.state_dir) / "heartbeat.json")
            lease, incident = ledger_lines(chosen, root, probe)
            incidents.append(incident)
            parts = [run, lease, cycle_line(chosen, heartbeat, probe), guards_line(heartbeat)]
            lines.append(account_line(chosen.account, parts))
        lines.append(merged_incidents(list(bots.values()), incidents))
    # The incidents line came from ledger_lines; keep it last, as an operator reads top-down to "what is open".
    lines.sort(key=lambda line: line.part == "incidents")
    return lines, probe


# --- accounts ---------------------------------------------------------------------------------------------------


def declared_accounts(settings: Settings) -> list[Any] | None:
    """The declared accounts, or None without an accounts file (or with one status cannot read: said elsewhere)."""
    try:
        return declared(settings)
    except ConfigError:
        return None


def account_bots(settings: Settings) -> dict[str, Settings]:
    """Bot deployment -> the settings of the account it trades: trading-bot/<account> each, or trading-bot/paper.

    An account whose key cannot be read here (status needs none) still gets its own folders and port."""
    specs = declared_accounts(settings)
    if specs is None:
        return {BOT_DEPLOYMENT: settings}
    bots = {}
    for index, spec in enumerate(specs):
        try:
            chosen = account_settings(settings, spec.name)
        except ConfigError:
            chosen = settings.model_copy(update={"account": spec.name, **own_files(settings, spec, index)})
        bots[f"trading-bot/{spec.name}"] = chosen
    return bots


def account_line(account: str, parts: list[Line]) -> Line:
    """One account's bot: its run, lease, last cycle and guards in one line, at the worst of their levels."""
    worst = max((line.level for line in parts), key=lambda level: SEVERITY[level])
    text = "; ".join(f"{line.part} {line.text}" for line in parts)
    return Line(f"bot:{account}", worst, text)


def merged_incidents(accounts: list[Settings], lines: list[Line]) -> Line:
    """Every account's incidents line in one: WARN when any is open, DOWN when a ledger is unreachable."""
    worst = max((line.level for line in lines), key=lambda level: SEVERITY[level])
    if worst == "OK":
        return Line("incidents", "OK", "none open")
    shown = "; ".join(
        f"{s.account}: {line.text}" for s, line in zip(accounts, lines, strict=True) if line.level != "OK"
    )
    return Line("incidents", worst, shown)


# --- Prefect ----------------------------------------------------------------------------------------------------


def server_line(api_url: str, up: dict[str, Any] | None, probe: Probe) -> Line:
    try:
        api_json(f"{api_url}/health", timeout=TIMEOUT_SECONDS)
        version = api_json(f"{api_url}/admin/version", timeout=TIMEOUT_SECONDS)
    except (OSError, ValueError) as error:
        return Line("server", "DOWN", f"{api_url}: {_reason(error)}")
    probe.server_up = True
    restarts = (up or {}).get("restarts", {}).get("server", 0)
    again = f", restarted {restarts}x by perps-bot up" if restarts else ""
    return Line("server", "OK", f"{api_url} (Prefect {version}){again}")


def runner_line(deployments: dict[str, dict[str, Any] | None], up: dict[str, Any] | None, probe: Probe) -> Line:
    """The runner serving the bot deployments: alive, and each deployment polled within the last minute."""
    pid = (up or {}).get("runner_pid")
    process = f"pid {pid}" if pid else None
    if up is not None and not (isinstance(pid, int) and pid_alive(pid)):
        return Line("runner", "DOWN", "not running (perps-bot up restarts it)")
    if not probe.server_up:
        return Line("runner", "--" if process else "DOWN", f"{process or 'unknown'}; deployments unknown (no server)")
    missing = [name for name, deployment in deployments.items() if deployment is None]
    if missing:
        return Line("runner", "WARN", f"{', '.join(missing)} not registered (is deployments.serve_all running?)")
    found = [d for d in deployments.values() if d is not None]
    ages = [_age(d.get("last_polled")) for d in found]
    polled = None if None in ages else max(a for a in ages if a is not None)
    states = {str(d.get("status") or "unknown").lower() for d in found}
    names = next(iter(deployments)) if len(deployments) == 1 else f"{len(deployments)} bot deployments"
    seen = f"polled {polled:.0f} s ago" if polled is not None else "never polled"
    text = ", ".join(p for p in (process, f"{names} {'/'.join(sorted(states))}", seen) if p)
    fresh = polled is not None and polled <= RUNNER_POLL_STALE_SECONDS
    return Line("runner", "OK" if fresh else "WARN", text)


def worker_line(worker: dict[str, Any]) -> Line:
    """A Prefect worker of `perps-bot up --workers N`: its process and its health endpoint (--with-healthcheck)."""
    from deployments.workers import worker_healthy

    name, pid, port = worker.get("name"), worker.get("pid"), worker.get("health_port")
    if not (isinstance(pid, int) and pid_alive(pid)):
        return Line("worker", "DOWN", f"{name}: not running (perps-bot up restarts it)")
    healthy = isinstance(port, int) and worker_healthy(port, timeout=TIMEOUT_SECONDS)
    restarts = worker.get("restarts") or 0
    again = f", restarted {restarts}x by perps-bot up" if restarts else ""
    verdict = "healthy" if healthy else "not answering /health (not polling the pool?)"
    return Line("worker", "OK" if healthy else "WARN", f"{name}: pid {pid}, :{port}/health {verdict}{again}")


def bot_run_line(
    api_url: str,
    deployment: dict[str, Any] | None,
    up: dict[str, Any] | None,
    probe: Probe,
    deployment_name: str = BOT_DEPLOYMENT,
) -> Line:
    """The bot deployment's newest live run (else its newest run): Running is OK."""
    if not probe.server_up:
        return Line("bot run", "--", "unknown (no server)")
    run = None
    if deployment is not None:  # the newest live run (a restart follows a crash), else the newest of all
        for states in (LIVE_STATES, None):
            flow_runs: dict[str, Any] = {"deployment_id": {"any_": [deployment["id"]]}}
            if states:
                flow_runs["state"] = {"type": {"any_": list(states)}}
            found = _post(
                f"{api_url}/flow_runs/filter",
                {"flow_runs": flow_runs, "sort": "EXPECTED_START_TIME_DESC", "limit": 1},
            )
            if found:
                run = found[0]
                break
    started = ((up or {}).get("bots") or {}).get(deployment_name) or (
        (up or {}).get("flow_run_id") if deployment_name == BOT_DEPLOYMENT else None
    )
    if run is None and started:
        run = _get(f"{api_url}/flow_runs/{started}")
    if run is None:
        return Line("bot run", "WARN", f"no {deployment_name} run")
    state = run.get("state") or {}
    kind = str(state.get("type") or "UNKNOWN")
    url = f"{_ui_url(api_url)}/runs/flow-run/{run['id']}"
    level: Level = "OK" if kind == "RUNNING" else "WARN"
    done = " (final)" if kind in FINAL_STATES else ""
    return Line("bot run", level, f"{state.get('name') or kind.title()}{done} {url}")


def _ui_url(api_url: str) -> str:
    ui = os.environ.get("PREFECT_UI_URL")
    return ui.rstrip("/") if ui else api_url.removesuffix("/api")


# --- the bot's own records ------------------------------------------------------------------------------------


def ledger_lines(settings: Settings, root: Path, probe: Probe) -> list[Line]:
    """The lease line and the incidents line, from one read-only look at the ledger."""
    url = settings.database_url
    if url.startswith("sqlite:///") and not _under(root, Path(url.removeprefix("sqlite:///"))).exists():
        where = url.removeprefix("sqlite:///")
        return [Line("lease", "--", f"no ledger at {where}"), Line("incidents", "--", f"no ledger at {where}")]
    from trader.ledger import Ledger

    try:
        ledger = Ledger(url, account=settings.account, migrate=False)
    except Exception as error:  # any driver error: the ledger is the part that is down
        return [Line("lease", "DOWN", f"ledger: {_reason(error)}"), Line("incidents", "DOWN", "ledger unreachable")]
    try:
        return [lease_line(ledger, settings.account, probe), incidents_line(ledger)]
    except Exception as error:
        return [Line("lease", "DOWN", f"ledger: {_reason(error)}"), Line("incidents", "DOWN", "ledger unreachable")]
    finally:
        ledger.dispose()


def lease_line(ledger: Any, account: str, probe: Probe) -> Line:
    if not hasattr(ledger, "current_lease"):
        return Line("lease", "--", "this ledger has no account leases")
    lease = ledger.current_lease(account)
    if lease is None:
        return Line("lease", "WARN", f"account {account}: no bot has held the lease")
    age = lease.seconds_since_renewal()
    text = f"account {account}: {lease.holder.describe()}, renewed {age:.1f} s ago (TTL {lease.ttl_seconds:g} s)"
    if lease.expired():
        return Line("lease", "WARN", f"expired: {text}")
    probe.bot_alive = True
    return Line("lease", "OK", text)


def incidents_line(ledger: Any) -> Line:
    incidents = ledger.open_incidents()
    if not incidents:
        return Line("incidents", "OK", "none open")
    shown = "; ".join(f"#{i.id} {i.severity} {i.title}" for i in incidents[-3:])
    more = f" (newest 3 of {len(incidents)})" if len(incidents) > 3 else ""
    return Line("incidents", "WARN", f"{len(incidents)} open{more}: {shown}")


def read_heartbeat(path: Path) -> dict[str, Any] | None:
    """The bot's heartbeat file, or None when there is none (or it is being replaced right now)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stale_after(settings: Settings) -> float:
    """A heartbeat older than three of the bot's heartbeat periods (plus slack) means it stopped cycling."""
    return 3 * max(settings.cycle_interval_seconds, settings.heartbeat_interval_seconds) + 5


def cycle_line(settings: Settings, heartbeat: dict[str, Any] | None, probe: Probe) -> Line:
    if heartbeat is None or not isinstance(heartbeat.get("wall_time"), int | float):
        return Line("cycle", "DOWN", f"no heartbeat file in {settings.state_dir}")
    age = time.time() - float(heartbeat["wall_time"])
    detail = f"cycle {heartbeat.get('cycles')}, market time {heartbeat.get('market_time')}"
    if age > stale_after(settings):
        return Line("cycle", "DOWN", f"last cycle {age:.0f} s ago ({detail}); the bot is not cycling")
    probe.bot_alive = True
    return Line("cycle", "OK", f"last cycle {age:.1f} s ago ({detail})")


def guards_line(heartbeat: dict[str, Any] | None) -> Line:
    if heartbeat is None:
        return Line("guards", "--", "no heartbeat file")
    trading = str(heartbeat.get("trading_state") or "unknown")
    guards = heartbeat.get("guards") or {}
    raised = [f"{name} {g.get('level')}" for name, g in sorted(guards.items()) if g.get("level") not in (None, "ok")]
    text = f"{trading}; {len(guards)} guard(s), " + (", ".join(raised) if raised else "all ok")
    return Line("guards", "OK" if trading == "trading" and not raised else "WARN", text)


# --- helpers ----------------------------------------------------------------------------------------------------


def read_up_file(root: Path) -> dict[str, Any] | None:
    """var/prefect/up.json of a `perps-bot up` started in root, or None."""
    try:
        data = json.loads((root / UP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _get(url: str) -> dict[str, Any] | None:
    try:
        data = api_json(url, timeout=TIMEOUT_SECONDS)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _post(url: str, body: dict[str, Any]) -> list[Any] | None:
    try:
        data = api_json(url, body, timeout=TIMEOUT_SECONDS)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, list) else None


def _age(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (datetime.now(UTC) - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds()


def _under(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)  # urllib wraps the socket error
    return str(reason or error).splitlines()[0][:200] or type(error).__name__
