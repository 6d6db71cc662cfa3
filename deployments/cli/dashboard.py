"""perps-bot dashboard [--refresh 5] [--window-min 15] [--url http://HOST:PORT]: the runbook's perps_dashboard.

A live terminal dashboard (rich Live), redrawn every --refresh seconds until Ctrl-C:

- the bot: /health (status, trading state, cycle, last cycle and checkpoint age, WebSocket state) and /metrics (each
  guard's level and reading, daily PnL, equity) from the bot's exporter: METRICS_HOST:METRICS_PORT, or --url for a
  bot on another machine;
- the account's ledger: positions with realized PnL, orders and fills in the last --window-min minutes (of the
  account's clock: replay time for a replayed paper account), open incidents, the lease holder;
- Prefect (PREFECT_API_URL, else the embedded stack's): the last run of each deployment.

Each source is read on its own: one that cannot be reached is shown as such, in its panel, and the others keep
drawing. Bad values (--refresh or --window-min <= 0, a --url that is not http(s)://host:port) are one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from trader.errors import ConfigError
from trader.settings import Settings

TIMEOUT_SECONDS = 2.0
LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "bold red"}


@dataclass
class Snapshot:
    """One refresh: each source's data, or the one-line reason it could not be read."""

    taken_at: datetime
    health: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    bot_error: str | None = None
    ledger: dict[str, Any] = field(default_factory=dict)
    ledger_error: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    prefect_error: str | None = None


def dashboard_command(settings: Settings, args: argparse.Namespace) -> int:
    refresh = 5.0 if args.refresh is None else args.refresh
    window = 15.0 if args.window_min is None else args.window_min
    if refresh <= 0:
        raise ConfigError(f"--refresh: must be above 0 seconds (got {refresh:g}); e.g. --refresh 5")
    if window <= 0:
        raise ConfigError(f"--window-min: must be above 0 minutes (got {window:g}); e.g. --window-min 15")
    url = bot_url(settings, args.url)
    api_url = prefect_api_url()
    stop = threading.Event()
    frames = 0
    try:
        with Live(Text("reading..."), refresh_per_second=4, screen=False, transient=False) as live:
            while not stop.is_set():
                frames += 1
                live.update(render(gather(settings, url, window, api_url), settings, url, refresh, frames))
                stop.wait(refresh)
    except KeyboardInterrupt:
        pass
    return 0


def bot_url(settings: Settings, given: str | None) -> str:
    """--url (checked: http(s)://host:port), or the bot's own METRICS_HOST:METRICS_PORT."""
    if given is None:
        host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "", "::") else settings.metrics_host
        return f"http://{host}:{settings.metrics_port}"
    parts = urlsplit(given)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ConfigError(f"--url: {given!r} is not a bot's metrics address; use http://HOST:PORT (its METRICS_PORT)")
    return given.rstrip("/")


def prefect_api_url() -> str | None:
    """PREFECT_API_URL, else the embedded stack's (var/prefect/up.json), else None (no Prefect panel data)."""
    from deployments.status import read_up_file

    given = os.environ.get("PREFECT_API_URL")
    if given:
        return given.rstrip("/")
    up = read_up_file(Path.cwd())
    return str(up["api_url"]).rstrip("/") if up and up.get("api_url") else None


# --- reading -------------------------------------------------------------------------------------------------------


def gather(settings: Settings, url: str, window_min: float, api_url: str | None) -> Snapshot:
    snapshot = Snapshot(taken_at=datetime.now().astimezone())
    try:
        snapshot.health = _get_json(f"{url}/health")
        snapshot.metrics = read_metrics(f"{url}/metrics")
    except (OSError, ValueError) as error:
        snapshot.bot_error = f"bot at {url} unreachable: {_reason(error)}"
    try:
        snapshot.ledger = read_ledger(settings, window_min)
    except Exception as error:  # any ledger failure is shown in its panel; the dashboard keeps drawing
        snapshot.ledger_error = f"ledger unreachable: {_reason(error)}"
    if api_url is None:
        snapshot.prefect_error = "no Prefect server named (PREFECT_API_URL, or perps-bot up)"
    else:
        try:
            snapshot.runs = read_runs(api_url)
        except (OSError, ValueError) as error:
            snapshot.prefect_error = f"Prefect at {api_url} unreachable: {_reason(error)}"
    return snapshot


def read_metrics(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:
        text = answer.read().decode()
    found: dict[str, Any] = {"readings": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "perps_bot_guard_reading":
                found["readings"][sample.labels.get("guard", "?")] = sample.value
            elif sample.name in ("perps_bot_daily_pnl_pct", "perps_bot_balance", "perps_bot_orders_total"):
                found[sample.name] = sample.value
    return found


def read_ledger(settings: Settings, window_min: float) -> dict[str, Any]:
    from deployments.cli.rejections import account_clock
    from trader.runtime import open_ledger

    end = account_clock(settings)
    start = end - timedelta(minutes=window_min)
    with open_ledger(settings, migrate=False) as ledger:
        positions = ledger.positions()
        return {
            "window": (start, end),
            "positions": [(s, p.quantity, p.average_entry_price, ledger.realized_pnl(s)) for s, p in positions.items()],
            "orders": ledger.orders_created_between(start, end + timedelta(microseconds=1)),
            "fills": [f for f in ledger.fills_after(start) if f.filled_at <= end],
            "incidents": ledger.open_incidents(),
            "lease": ledger.current_lease(settings.account),
        }


def read_runs(api_url: str) -> list[dict[str, Any]]:
    """The newest run of each deployment: name, state, when."""
    deployments = _post_json(f"{api_url}/deployments/filter", {"limit": 200})
    runs = []
    for deployment in sorted(deployments, key=lambda d: str(d.get("name"))):
        newest = _post_json(
            f"{api_url}/flow_runs/filter",
            {"deployments": {"id": {"any_": [deployment["id"]]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 1},
        )
        run = newest[0] if newest else {}
        runs.append(
            {
                "deployment": deployment.get("name"),
                "state": (run.get("state") or {}).get("name", "never run"),
                "at": run.get("start_time") or run.get("expected_start_time"),
            }
        )
    return runs


# --- drawing -------------------------------------------------------------------------------------------------------


def render(snapshot: Snapshot, settings: Settings, url: str, refresh: float, frame: int) -> Group:
    title = (
        f"perps-bot dashboard  account {settings.account}  profile {settings.profile}  {url}  "
        f"{snapshot.taken_at:%H:%M:%S}  every {refresh:g} s  (refresh #{frame}, Ctrl-C to quit)"
    )
    return Group(Text(title, style="bold"), _bot_panel(snapshot), _ledger_panel(snapshot), _runs_panel(snapshot))


def _bot_panel(snapshot: Snapshot) -> Panel:
    if snapshot.bot_error is not None:
        return Panel(Text(snapshot.bot_error, style="bold red"), title="bot")
    health = snapshot.health or {}
    state = health.get("trading_state") or "-"
    lines = [
        f"health {health.get('status', '?')}  trading_state {state}  cycle {health.get('cycle', 0)}  "
        f"last cycle {_seconds(health.get('last_cycle_age_seconds'))} ago  "
        f"checkpoint {_seconds(health.get('last_checkpoint_age_seconds'))} ago",
        f"equity {snapshot.metrics.get('perps_bot_balance', '-')}  daily PnL "
        f"{_pct(snapshot.metrics.get('perps_bot_daily_pnl_pct'))}  open positions {health.get('active_positions')}",
    ]
    websocket = health.get("websocket")
    if websocket:
        lines.append(f"websocket {json.dumps(websocket, sort_keys=True)[:160]}")
    if health.get("reason"):
        lines.append(f"reason: {health['reason']}")
    guards = Table(title="guards", expand=False)
    for column in ("guard", "level", "reading"):
        guards.add_column(column)
    readings = snapshot.metrics.get("readings", {})
    for guard, level in sorted((health.get("guards") or {}).items()):
        reading = readings.get(guard)
        guards.add_row(
            guard, Text(level, style=LEVEL_STYLE.get(level, "")), "-" if reading is None else f"{reading:.4g}"
        )
    return Panel(Group(Text("\n".join(lines)), guards), title="bot")


def _ledger_panel(snapshot: Snapshot) -> Panel:
    if snapshot.ledger_error is not None:
        return Panel(Text(snapshot.ledger_error, style="bold red"), title="ledger")
    data = snapshot.ledger
    start, end = data["window"]
    lease = data["lease"]
    holder = f"{lease.holder.describe()} (token {lease.token})" if lease is not None else "nobody"
    positions = Table(title="positions")
    for column in ("symbol", "quantity", "avg entry", "realized PnL"):
        positions.add_column(column)
    for symbol, quantity, entry, realized in data["positions"]:
        positions.add_row(symbol, str(quantity), str(entry), str(realized))
    activity = Table(title=f"orders and fills {start:%H:%M}-{end:%H:%M} UTC")
    for column in ("when", "what", "symbol", "side", "quantity", "status / price"):
        activity.add_column(column)
    rows = [(o.created_at, "order", o.symbol, o.side, str(o.quantity), o.status) for o in data["orders"]]
    rows += [(f.filled_at, "fill", f.symbol, f.side, str(f.quantity), str(f.price)) for f in data["fills"]]
    for when, *rest in sorted(rows, key=lambda r: r[0])[-12:]:
        activity.add_row(f"{when:%H:%M:%S}", *rest)
    incidents = data["incidents"]
    shown = "; ".join(f"#{i.id} {i.severity} {i.title}" for i in incidents[-4:]) or "none"
    summary = (
        f"lease holder: {holder}\n{len(data['orders'])} orders, {len(data['fills'])} fills in the window\n"
        f"open incidents ({len(incidents)}): {shown}"
    )
    return Panel(Group(Text(summary), positions, activity), title="ledger")


def _runs_panel(snapshot: Snapshot) -> Panel:
    if snapshot.prefect_error is not None:
        return Panel(Text(snapshot.prefect_error, style="yellow"), title="runbook deployments")
    table = Table()
    for column in ("deployment", "last run", "at"):
        table.add_column(column)
    for run in snapshot.runs:
        style = "red" if run["state"] in ("Failed", "Crashed") else ""
        table.add_row(str(run["deployment"]), Text(str(run["state"]), style=style), str(run["at"] or "-")[:19])
    return Panel(table, title="runbook deployments")


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:
            data = json.loads(answer.read())
    except urllib.error.HTTPError as error:  # /health answers 503 while unhealthy, with its JSON
        data = json.loads(error.read())
    if not isinstance(data, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return data


def _post_json(url: str, body: dict[str, Any]) -> list[Any]:
    from deployments.embedded import api_json

    data = api_json(url, body, timeout=TIMEOUT_SECONDS)
    if not isinstance(data, list):
        raise ValueError(f"{url} did not answer a list")
    return data


def _seconds(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, int | float) else "-"


def _pct(value: Any) -> str:
    return f"{value:+.2f}%" if isinstance(value, int | float) else "-"


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason or error) or type(error).__name__
