"""perps-bot: the runbook's command lines, plus `perps-bot up` for the embedded stack."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console
from rich.table import Table

from trader.domain import OrderRequest, OrderType, Side, TimeInForce
from trader.errors import ConfigError, OrderRejected, TraderError
from trader.ledger.lease import LeaseHeld
from trader.settings import PROFILES, Settings, load_settings

if TYPE_CHECKING:
    from trader.orders.path import OrderPath
    from trader.risk import RiskControls
    from trader.risk.emergency import CancelResult, Switch, SwitchChange
    from trader.state.checkpoints import CheckpointStore

out = Console(highlight=False)
EXIT_BAD_INPUT = 2
EMERGENCY_COMMANDS = ("kill-switch", "reduce-only", "cancel-all", "flatten")
SWITCH_ACTIONS = ("on", "off", "status")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr, exit 2 (argparse prints the whole usage by default)."""
        self.exit(EXIT_BAD_INPUT, f"perps-bot: error: {message} (see perps-bot --help)\n")


def _decimal(flag: str):
    def parse(text: str) -> Decimal:
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value.is_finite():
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return value

    parse.__name__ = flag
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="perps-bot", description="GPT-Trader bot and runbook commands.")
    parser.add_argument(
        "command",
        nargs="?",
        choices=["run", "up", "status", "checkpoint", "drill", "metrics", *EMERGENCY_COMMANDS],
        default="run",
        help="run (default): the bot or the order tooling; up: the embedded stack (supervised); status: one line "
        "per part, exit 0 healthy, 1 degraded, 2 nothing reachable; checkpoint: list|create|restore; "
        "emergency: kill-switch on|off|status, reduce-only on|off|status, cancel-all, flatten [--yes]; "
        "drill SCENARIO: a failover drill on its own namespace; metrics --metrics-file PATH: serve a metrics file",
    )
    parser.add_argument(
        "action",
        nargs="?",
        help="with checkpoint: list, create, or restore ID; with kill-switch/reduce-only: on|off|status; "
        "with drill: the scenario (redis-outage, engine-crash, postgres-outage, s3-outage, exchange-degradation, all)",
    )
    parser.add_argument("checkpoint_id", nargs="?", metavar="ID", help="with checkpoint restore: the checkpoint id")
    parser.add_argument("--profile", help=f"one of {', '.join(PROFILES)} (default: PERPS_PROFILE or dev)")
    mode = parser.add_argument_group("bot")
    mode.add_argument("--dev-fast", action="store_true", help="run one cycle and exit (smoke test)")
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="run a full cycle, send nothing, print what would be sent; with checkpoint restore: write nothing",
    )
    mode.add_argument("--reduce-only", action="store_true", help="only orders that shrink positions")
    mode.add_argument(
        "--standby",
        action="store_true",
        help="warm standby: wait for the account's lease and take over when the running bot stops or dies",
    )
    mode.add_argument("--cycles", type=int, help="stop after this many cycles")
    mode.add_argument("--interval", type=float, help="seconds between cycles (default from the profile)")
    mode.add_argument(
        "--metrics-file",
        type=Path,
        help="rewrite this file (Prometheus text) and PATH.health.json every cycle; with metrics: the file to serve",
    )
    drills = parser.add_argument_group("failover drills (perps-bot drill SCENARIO)")
    drills.add_argument("--keys", type=int, default=1000, help="with drill: keys seeded when there is no checkpoint")
    tools = parser.add_argument_group("account and order tooling")
    tools.add_argument("--account-snapshot", action="store_true", help="balances, permissions and fee tier")
    tools.add_argument("--preview-order", action="store_true", help="preview an order (or an edit with --order-id)")
    tools.add_argument("--place-order", action="store_true", help="preview, then place the order and record it")
    tools.add_argument("--apply-order-edit", metavar="ORDER_ID:PREVIEW_ID", help="apply a previewed edit")
    tools.add_argument("--order-symbol")
    tools.add_argument("--order-side", choices=[s.value for s in Side])
    tools.add_argument("--order-type", choices=[t.value for t in OrderType], default="market")
    tools.add_argument("--order-quantity", type=_decimal("--order-quantity"))
    tools.add_argument("--order-price", type=_decimal("--order-price"))
    tools.add_argument("--order-stop", type=_decimal("--order-stop"))
    tools.add_argument("--order-tif", choices=[t.value for t in TimeInForce], default="GTC")
    tools.add_argument("--order-expire", help="GTD expiry, ISO-8601 UTC (e.g. 2026-11-22T00:00:00Z)")
    tools.add_argument("--order-client-id")
    tools.add_argument("--order-reduce-only", action="store_true")
    tools.add_argument("--order-id", help="with --preview-order: preview an edit of this resting order")
    checkpoints = parser.add_argument_group("checkpoints (perps-bot checkpoint list | create | restore ID)")
    checkpoints.add_argument("--reason", default="manual", help="with checkpoint create: why (default manual)")
    checkpoints.add_argument(
        "--no-broker", action="store_true", help="with checkpoint create: ledger only, no balances from the broker"
    )
    emergency = parser.add_argument_group("emergency procedures (kill-switch, reduce-only, cancel-all, flatten)")
    emergency.add_argument("--yes", action="store_true", help="with flatten: sell without asking for confirmation")
    emergency.add_argument(
        "--request-id", help="with flatten: reuse the id of an earlier flatten so a retry never sells twice"
    )
    emergency.add_argument("--symbols", help="with flatten: comma-separated symbols (default TRADING_SYMBOLS)")
    emergency.add_argument("--note", default="", help="with an emergency command: why (goes into the incident)")
    up = parser.add_argument_group("embedded stack (perps-bot up)")
    up.add_argument("--port", type=int, default=4200, help="Prefect server port (default 4200)")
    up.add_argument("--no-bot", action="store_true", help="serve the deployments without starting trading-bot")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(
            profile=args.profile,
            risk_reduce_only_mode=True if args.reduce_only else None,
            metrics_file=args.metrics_file,
        )
        if args.standby and (args.command != "run" or _order_tooling(args)):
            what = args.command if args.command != "run" else "the order tooling"
            raise ConfigError(f"--standby: only for the bot (perps-bot --profile P --standby), not with {what}")
        if args.command == "drill":
            from deployments.drill_cli import drill_command
            from trader.logs import configure_logging

            configure_logging(settings.log_file, stderr=False)  # the recovery lines land in perps_bot.log
            return drill_command(settings, args.action or "", args.keys)
        if args.command == "status":
            from deployments.status import status_command

            return status_command(settings, args)
        if args.command == "metrics":
            return serve_metrics_file(settings, args)
        if args.command == "checkpoint":
            return checkpoint_command(settings, args)
        if args.command in EMERGENCY_COMMANDS:
            return emergency_command(settings, args)
        if args.action is not None:
            raise ConfigError(f"unexpected argument {args.action!r}: only perps-bot checkpoint takes an action")
        if args.command == "up":
            from deployments.embedded import run_embedded_stack

            return run_embedded_stack(settings, port=args.port, start_bot=not args.no_bot)
        if args.account_snapshot:
            return account_snapshot(settings)
        if args.apply_order_edit:
            return apply_order_edit(settings, args.apply_order_edit)
        if args.preview_order or args.place_order:
            return preview_order(settings, args)
        return run_bot(settings, args)
    except (ConfigError, OrderRejected, LeaseHeld) as error:
        print(f"perps-bot: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TraderError as error:
        print(f"perps-bot: error: {error}", file=sys.stderr)
        return 1


# --- bot ---------------------------------------------------------------------------------------------------------


def _order_tooling(args: argparse.Namespace) -> bool:
    return bool(args.account_snapshot or args.apply_order_edit or args.preview_order or args.place_order)


def run_bot(settings: Settings, args: argparse.Namespace) -> int:
    """--dev-fast: one cycle; --dry-run: one cycle, nothing sent; otherwise cycle until Ctrl-C or --cycles."""
    from trader.logs import configure_logging
    from trader.runtime import build_bot, start_metrics

    if args.cycles is not None and args.cycles < 1:
        raise ConfigError(f"--cycles: must be at least 1 (got {args.cycles})")
    if args.standby and (args.dev_fast or args.dry_run):
        flag = "--dev-fast" if args.dev_fast else "--dry-run"
        raise ConfigError(f"--standby: not with {flag} (a standby waits to take over a running bot; drop one of them)")
    configure_logging(settings.log_file)
    bot = build_bot(settings, mode="dry_run" if args.dry_run else None)
    cycles = 1 if (args.dev_fast or args.dry_run) else args.cycles
    one_shot = args.dev_fast or args.dry_run
    # The lease first: a second bot on a held account stops here, before the exporter or any recovery.
    bot.take_lease(lease_wait_seconds=float("inf") if args.standby else 0.0)
    # A one-cycle smoke run writes --metrics-file but does not take the exporter's port from a running bot.
    exporter = start_metrics(settings.model_copy(update={"metrics_enabled": False}) if one_shot else settings, bot)
    if exporter is not None:
        out.print(f"metrics on {exporter.url}/metrics, health on {exporter.url}/health")
    stop = _StopFlag()
    bot.start()
    status = "crashed"
    try:
        summary = bot.run(cycles, interval_seconds=args.interval, should_stop=stop, on_cycle=_print_cycle)
        status = "stopped"
    finally:
        bot.stop(status)
        if exporter is not None:
            exporter.stop()
    out.print(
        f"{summary.cycles} cycle(s), {summary.orders} order(s) sent, {summary.fills} fill(s); "
        f"stopped: {summary.stopped_by}"
    )
    return 0


def serve_metrics_file(settings: Settings, args: argparse.Namespace) -> int:
    """perps-bot metrics --metrics-file PATH: the standalone exporter for a bot that writes its metrics file."""
    from trader.metrics.__main__ import main as exporter_main

    if args.metrics_file is None:
        raise ConfigError("metrics: --metrics-file PATH is required (the file the bot writes with --metrics-file)")
    return exporter_main(
        [
            "--metrics-file",
            str(args.metrics_file),
            "--host",
            settings.metrics_host,
            "--port",
            str(settings.metrics_port),
        ]
    )


class _StopFlag:
    """Ctrl-C or SIGTERM ends the run between cycles; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)
        signal.signal(signal.SIGINT, self._request)

    def _request(self, signum: int, _frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


def _print_cycle(report) -> None:
    prices = ", ".join(f"{s} {p}" for s, p in report.prices.items())
    out.print(
        f"cycle {report.cycle} at {report.at:%Y-%m-%d %H:%M} UTC: {prices}; "
        f"daily PnL {report.daily_pnl_pct:.2f}%; {report.duration_ms:.1f} ms"
    )
    for sent in report.orders:
        r = sent.request
        verb = "would send" if sent.status == "dry_run" else sent.status
        price = f" @ {r.limit_price}" if r.limit_price else ""
        out.print(
            f"  {verb}: {r.side} {r.quantity} {r.symbol} {r.order_type}{price}"
            f"{' reduce-only' if r.reduce_only else ''} [{r.client_order_id}] {sent.reason}"
        )
    for intent, reason in report.refused:
        out.print(f"  refused by risk: {intent.side} {intent.quantity} {intent.symbol}: {reason}")
    if not report.orders and not report.refused:
        out.print("  no orders: strategy holds")


# --- checkpoints -----------------------------------------------------------------------------------------------------

CHECKPOINT_ACTIONS = ("list", "create", "restore")


def checkpoint_command(settings: Settings, args: argparse.Namespace) -> int:
    """perps-bot checkpoint list | create [--reason R] [--no-broker] | restore ID [--dry-run]."""
    from trader.logs import configure_logging
    from trader.state.checkpoints import checkpoint_store_from_settings

    action, checkpoint_id = args.action, args.checkpoint_id
    if action not in CHECKPOINT_ACTIONS:
        got = f" (got {action!r})" if action else ""
        raise ConfigError(f"checkpoint: expected one of {', '.join(CHECKPOINT_ACTIONS)}{got}")
    if action == "restore" and not checkpoint_id:
        raise ConfigError("checkpoint restore: give the checkpoint ID (perps-bot checkpoint list shows them)")
    if action != "restore" and checkpoint_id:
        raise ConfigError(f"checkpoint {action}: takes no ID (got {checkpoint_id!r})")
    configure_logging(settings.log_file, stderr=False)  # "Restored from checkpoint" lines go to perps_bot.log
    store = checkpoint_store_from_settings(settings)
    try:
        if action == "list":
            return checkpoint_list(store)
        if action == "create":
            return checkpoint_create(settings, store, args)
        return checkpoint_restore(settings, store, checkpoint_id, dry_run=args.dry_run)
    finally:
        store.dispose()


def checkpoint_list(store: CheckpointStore) -> int:
    checkpoints = store.list()
    if not checkpoints:
        out.print("no checkpoints yet: perps-bot checkpoint create")
        return 0
    table = Table(title="Checkpoints (newest first)")
    for column in ("id", "created (UTC)", "reason", "size", "compressed", "sha256"):
        table.add_column(column, no_wrap=True, justify="right" if column == "size" else "left")
    for c in checkpoints:
        table.add_row(
            c.id,
            f"{c.created_at:%Y-%m-%d %H:%M:%S}",
            c.reason,
            str(c.size_bytes),
            "yes" if c.compressed else "no",
            c.sha256[:12],
        )
    # Piped output (not a terminal) gets rich's 80 columns, which would cut the ids; a table line is ~100 wide.
    console = out if out.is_terminal else Console(highlight=False, width=160)
    console.print(table)
    return 0


def checkpoint_create(settings: Settings, store: CheckpointStore, args: argparse.Namespace) -> int:
    """Snapshot of the ledger (positions, open orders) plus the broker's balances unless --no-broker."""
    from trader.ledger import Ledger
    from trader.state.checkpoints import snapshot_from_ledger

    broker = None
    if not args.no_broker:
        from trader.runtime import build_broker

        broker = build_broker(settings)
    ledger = Ledger(settings.database_url)
    try:
        snapshot = snapshot_from_ledger(ledger, broker)
    finally:
        ledger.dispose()
    info = store.create(snapshot, reason=args.reason)
    out.print(
        f"created checkpoint {info.id}: {len(snapshot['positions'])} position(s), "
        f"{len(snapshot['open_orders'])} open order(s), {len(snapshot['balances'])} balance(s); "
        f"{info.size_bytes} bytes{' gzip' if info.compressed else ''}, sha256 {info.sha256[:12]}; "
        f"{info.duration_ms:.1f} ms",
        soft_wrap=True,
    )
    return 0


def checkpoint_restore(settings: Settings, store: CheckpointStore, checkpoint_id: str, *, dry_run: bool) -> int:
    """Verify the checkpoint, then write its positions into the ledger where they differ (--dry-run: only show).

    Open orders and balances are printed, not written: the exchange holds them, and reconciliation brings the
    ledger's orders back in line with it."""
    from trader.ledger import Ledger
    from trader.state.checkpoints import CheckpointNotFound

    try:
        restored = store.restore_checkpoint(checkpoint_id)
    except CheckpointNotFound as error:
        raise ConfigError(str(error)) from None
    info, snapshot = restored.info, restored.snapshot
    for note in restored.notes:
        out.print(f"[yellow]{note}[/]", soft_wrap=True)
    out.print(
        f"restored checkpoint {info.id} (created {info.created_at:%Y-%m-%d %H:%M:%S} UTC, reason {info.reason}) "
        f"from the {restored.source} copy: sha256 verified; {len(snapshot.get('positions', {}))} position(s), "
        f"{len(snapshot.get('open_orders', []))} open order(s), {len(snapshot.get('balances', {}))} balance(s); "
        f"{restored.duration_ms:.1f} ms",
        soft_wrap=True,
    )
    wanted = {
        symbol: (Decimal(p["quantity"]), Decimal(p["average_entry_price"]))
        for symbol, p in snapshot.get("positions", {}).items()
    }
    ledger = Ledger(settings.database_url)
    try:
        for session in ledger.list_sessions():
            if session.status == "running" and not dry_run:
                out.print(
                    f"[yellow]warning: bot session {session.id} ({session.profile}) is marked running; a live bot "
                    "reconciles positions with the exchange and may overwrite the restored ones[/]",
                    soft_wrap=True,
                )
        held = {s: (p.quantity, p.average_entry_price) for s, p in ledger.positions().items()}
        changes = {
            symbol: target
            for symbol in sorted(wanted.keys() | held.keys())
            if (target := wanted.get(symbol, (Decimal(0), Decimal(0)))) != held.get(symbol, (Decimal(0), Decimal(0)))
        }
        verb = "would set" if dry_run else "set"
        for symbol, (quantity, price) in changes.items():
            before_qty, before_price = held.get(symbol, (Decimal(0), Decimal(0)))
            out.print(f"  {verb} position {symbol}: {before_qty} @ {before_price} -> {quantity} @ {price}")
            if not dry_run:
                ledger.set_position(symbol, quantity, price, datetime.now(UTC))
    finally:
        ledger.dispose()
    if not changes:
        out.print("ledger positions already match the checkpoint: nothing written")
    elif dry_run:
        out.print(f"dry run: {len(changes)} position(s) differ; nothing written")
    else:
        out.print(f"wrote {len(changes)} position(s) to the ledger")
    for order in snapshot.get("open_orders", []):
        out.print(
            f"  open order in checkpoint (not restored; reconcile with the exchange): {order.get('client_order_id')} "
            f"{order.get('side')} {order.get('quantity')} {order.get('symbol')} {order.get('status')}",
            soft_wrap=True,
        )
    return 0


# --- emergency procedures ------------------------------------------------------------------------------------------


def emergency_command(settings: Settings, args: argparse.Namespace) -> int:
    """The runbooks' emergency procedures without Prefect: the flag files, the broker, the ledger, the incident; the
    Prefect Variable too when PREFECT_API_URL is set and answers."""
    from trader.logs import configure_logging

    if args.command in ("kill-switch", "reduce-only"):
        if args.action not in SWITCH_ACTIONS:
            got = f" (got {args.action!r})" if args.action else ""
            raise ConfigError(f"{args.command}: expected one of {', '.join(SWITCH_ACTIONS)}{got}")
    elif args.action is not None:
        raise ConfigError(f"{args.command}: takes no action (got {args.action!r})")
    if args.checkpoint_id is not None:
        raise ConfigError(f"{args.command}: unexpected argument {args.checkpoint_id!r}")
    configure_logging(settings.log_file, stderr=False)
    if args.command == "kill-switch":
        return switch_command(settings, "kill_switch", args.action, args.note)
    if args.command == "reduce-only":
        return switch_command(settings, "reduce_only", args.action, args.note)
    if args.command == "cancel-all":
        return cancel_all_command(settings, args.note)
    return flatten_command(settings, args)


def switch_command(settings: Settings, switch: Switch, action: str, note: str) -> int:
    """on: flag file + Prefect Variable (+ cancel-all for the kill switch), SEV-1 incident; off: cleared, resolved."""
    from trader.risk.emergency import PROCEDURES, RESOLVED_BY, TITLES, set_switch

    if action == "status":
        return switch_status(settings, switch)
    enabled = action == "on"
    changes = [set_switch(settings, switch, enabled, reason=note or "perps-bot")]
    variable, problem = _set_variable(switch, enabled)
    if variable is not None:
        changes.append(variable)
    rows = [c.row() for c in changes]
    cancelled = None
    if enabled and switch == "kill_switch":
        cancelled = _cancel_all(settings)
        rows += cancelled.rows()
    procedure = PROCEDURES[switch]
    _print_rows(f"Emergency {procedure} {action}", rows)
    for change in changes:
        _say(change.describe())
    if problem:
        done = "set" if enabled else "cleared"
        _say(f"[yellow]the flag file was {done}; the Prefect Variable {switch} was not: {problem}[/]")
    if cancelled is not None:
        _say(cancelled.summary())
    if enabled:
        evidence = "\n".join([f"reason: {note or 'not given'}", *(_row_line(r) for r in rows[:40])])
        _incident(settings, procedure, TITLES[switch], evidence)
    else:
        resolved = _resolve(settings, RESOLVED_BY[switch])
        _say(f"incidents resolved: {', '.join(resolved) or 'none were open'}")
        env_on = settings.risk_kill_switch_enabled if switch == "kill_switch" else settings.risk_reduce_only_mode
        if env_on:
            from trader.risk.emergency import ENV_NAMES

            _say(f"[yellow]{ENV_NAMES[switch]} is set in this environment: the switch stays ON where it is set[/]")
    return 0


def switch_status(settings: Settings, switch: Switch) -> int:
    """Where the switch is on: this environment, the flag file, the Prefect Variable."""
    from trader.risk.emergency import ENV_NAMES, flag_file

    env_on = settings.risk_kill_switch_enabled if switch == "kill_switch" else settings.risk_reduce_only_mode
    path = flag_file(settings, switch)
    variable = _read_variable(switch)
    table = Table(title=f"{switch} status")
    table.add_column("source")
    table.add_column("value")
    table.add_row(f"{ENV_NAMES[switch]} (this environment)", "ON" if env_on else "OFF")
    table.add_row(f"flag file {path}", "ON" if path.exists() else "OFF")
    table.add_row(f"Prefect Variable {switch}", variable)
    _wide().print(table)
    effective = env_on or path.exists() or variable.startswith("ON")
    _say(f"{switch}: {'ON' if effective else 'OFF'}")
    return 0


def cancel_all_command(settings: Settings, note: str) -> int:
    """Every working order on the broker cancelled in batches of 100 and recorded in the ledger; SEV-1 incident."""
    result = _cancel_all(settings)
    rows = result.rows()
    _print_rows("Emergency cancel-all", rows)
    _say(result.summary())
    evidence = "\n".join([f"reason: {note or 'not given'}", *(_row_line(r) for r in rows[:40])])
    _incident(settings, "cancel-all", f"cancel-all: {result.cancelled} working order(s) cancelled", evidence)
    return 0


def flatten_command(settings: Settings, args: argparse.Namespace) -> int:
    """Reduce-only on, cancel working orders, reduce-only market exits; asks first unless --yes."""
    from trader.ledger import Ledger
    from trader.risk.emergency import flatten
    from trader.runtime import build_broker

    symbols = [s.strip().upper() for s in (args.symbols or "").split(",") if s.strip()] or settings.symbols
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("flatten: sells every position at market; pass --yes to confirm (not interactive)")
        answer = input(f"Flatten {', '.join(symbols)}: cancel all orders and sell every position at market? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            _say("flatten: not confirmed, nothing done")
            return 1
    request_id = args.request_id or f"cli-{uuid.uuid4().hex[:16]}"
    variable, problem = _set_variable("reduce_only", True)
    broker, ledger = build_broker(settings), Ledger(settings.database_url)
    try:
        result = flatten(broker, ledger, settings, request_id=request_id, symbols=symbols)
    finally:
        ledger.dispose()
    rows = ([variable.row()] if variable is not None else []) + result.rows()
    _print_rows(f"Emergency flatten {request_id}", rows)
    _say(result.summary())
    if problem:
        _say(f"[yellow]the flag file was set; the Prefect Variable reduce_only was not: {problem}[/]")
    _say(f"retry with --request-id {request_id} to never sell twice")
    title = f"flatten: {len(result.exits)} reduce-only market exit(s), {len(result.skipped)} position(s) skipped"
    evidence = "\n".join([f"reason: {args.note or 'not given'}", *(_row_line(r) for r in rows[:40])])
    _incident(settings, "flatten", title, evidence)
    return 0


def _cancel_all(settings: Settings) -> CancelResult:
    from trader.ledger import Ledger
    from trader.risk.emergency import cancel_all, operator_override
    from trader.runtime import build_broker

    broker, ledger = build_broker(settings), Ledger(settings.database_url)
    try:
        with operator_override(ledger, settings, "cancel-all"):
            return cancel_all(broker, ledger)
    finally:
        ledger.dispose()


def _set_variable(switch: Switch, enabled: bool) -> tuple[SwitchChange | None, str | None]:
    """The Prefect Variable when PREFECT_API_URL is set and answers; else (None, why not)."""
    if not os.environ.get("PREFECT_API_URL"):
        return None, "PREFECT_API_URL is not set (only a bot reading this STATE_DIR sees the flag file)"
    from flows.switches import VARIABLES, SwitchVariables, VariablesUnavailable, parse_switch
    from trader.risk.emergency import SwitchChange

    variables = SwitchVariables(api_url=os.environ["PREFECT_API_URL"])
    try:
        before = variables.write(switch, enabled)
    except VariablesUnavailable as error:
        return None, f"unreachable ({error})"
    finally:
        variables.close()
    was = False if before is None else parse_switch(before)
    return SwitchChange(switch, f"Prefect Variable {VARIABLES[switch]}", was, enabled), None


def _read_variable(switch: Switch) -> str:
    if not os.environ.get("PREFECT_API_URL"):
        return "not read: PREFECT_API_URL is not set"
    from flows.switches import SwitchVariables, VariablesUnavailable, parse_switch

    variables = SwitchVariables(api_url=os.environ["PREFECT_API_URL"])
    try:
        value = variables.read()[switch]
    except VariablesUnavailable as error:
        return f"unreadable: {error}"
    finally:
        variables.close()
    if value is None:
        return "OFF (not set)"
    parsed = parse_switch(value)
    return f"ON ({value!r} is not true/false)" if parsed is None else "ON" if parsed else "OFF"


def _incident(settings: Settings, procedure: str, title: str, evidence: str) -> None:
    from trader.risk.emergency import incident_fingerprint, open_incident

    incident_id = open_incident(settings, procedure, title, evidence)
    _say(f"SEV-1 incident #{incident_id} ({incident_fingerprint(procedure)})")


def _resolve(settings: Settings, procedures: list[str]) -> list[str]:
    from trader.risk.emergency import resolve_incidents

    return resolve_incidents(settings, procedures)


def _print_rows(title: str, rows: list[dict[str, str]]) -> None:
    table = Table(title=title)
    for column in ("step", "target", "id", "before", "result"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["step"], row["target"], row["id"], row["before"], row["result"])
    _wide().print(table)


def _wide() -> Console:
    """Piped output gets rich's 80 columns, which would cut ids and paths."""
    return out if out.is_terminal else Console(highlight=False, width=200)


def _say(text: str) -> None:
    out.print(text, soft_wrap=True)


def _row_line(row: dict[str, str]) -> str:
    return f"{row['step']}: {row['target']} {row['id']} {row['before']} -> {row['result']}"


# --- account snapshot ------------------------------------------------------------------------------------------------


def account_snapshot(settings: Settings) -> int:
    """Balances, key permissions and fee tier straight from the broker."""
    from trader.runtime import build_broker

    snap = build_broker(settings).account_snapshot()
    balances = Table(title="Balances")
    for column in ("currency", "available", "hold", "total"):
        balances.add_column(column, justify="right" if column != "currency" else "left")
    for b in snap.balances:
        balances.add_row(b.currency, str(b.available), str(b.hold), str(b.total))
    out.print(balances)
    p = snap.permissions
    out.print(
        f"permissions: can_view={p.can_view} can_trade={p.can_trade} can_transfer={p.can_transfer} "
        f"portfolio_type={p.portfolio_type}",
        soft_wrap=True,
    )
    if p.can_trade and p.can_transfer:
        out.print(
            "[bold red]WARNING: this trading key can also transfer funds; use a key without transfer[/]",
            soft_wrap=True,
        )
    f = snap.fee_tier
    out.print(f"fee tier: {f.tier} maker={f.maker_fee_rate} taker={f.taker_fee_rate}")
    for position in snap.positions:
        out.print(f"position: {position.symbol} {position.quantity} @ {position.average_entry_price}")
    return 0


# --- order tooling ----------------------------------------------------------------------------------------------------


def _require(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name.removeprefix("--").replace("-", "_")) is None:
            raise ConfigError(f"{name}: required for this command")


def _order_request(args: argparse.Namespace) -> OrderRequest:
    _require(args, "--order-symbol", "--order-side", "--order-quantity")
    expire_at = None
    if args.order_expire:
        try:
            expire_at = datetime.fromisoformat(args.order_expire.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--order-expire: {args.order_expire!r} is not ISO-8601 (2026-11-22T00:00:00Z)") from None
        if expire_at.tzinfo is None:
            expire_at = expire_at.replace(tzinfo=UTC)
    return OrderRequest(
        symbol=args.order_symbol.upper(),
        side=Side(args.order_side),
        order_type=OrderType(args.order_type),
        quantity=args.order_quantity,
        client_order_id=args.order_client_id or f"cli-{uuid.uuid4().hex[:20]}",
        limit_price=args.order_price,
        stop_price=args.order_stop,
        time_in_force=TimeInForce(args.order_tif),
        expire_at=expire_at,
        reduce_only=args.order_reduce_only,
    )


def preview_order(settings: Settings, args: argparse.Namespace) -> int:
    """Preview an order (nothing sent), or an edit of a resting order; --place-order then places it."""
    from trader.runtime import build_broker

    if args.order_id:
        _require(args, "--order-quantity", "--order-price")
        broker = build_broker(settings)
        preview = broker.preview_edit(args.order_id, args.order_quantity, args.order_price)
        _print_preview(preview)
        out.print(f"apply with: perps-bot --apply-order-edit {args.order_id}:{preview.preview_id}")
        return 0
    request = _order_request(args)
    broker = build_broker(settings)
    broker.validate(request)  # bad input stops here: nothing previewed, sent or written
    position = Decimal(0)
    if args.place_order:  # then the controls: a refused order is never previewed, sent or written
        from trader.orders.path import check_controls

        controls = _controls(settings)
        position = _position(broker, request.symbol) if controls.reduce_only and not controls.kill_switch else position
        check_controls(request, position, controls)
        position = _position(broker, request.symbol)
    preview = broker.preview_order(request)
    _print_preview(preview)
    if not args.place_order:
        return 0 if not preview.errors else 1
    if preview.errors:
        raise OrderRejected(f"not placed: {'; '.join(preview.errors)}")
    with _manual_order_path(settings, broker, "--place-order") as path:
        outcome = path.send(request, position=position)
    order = outcome.order
    if order is None:
        out.print(f"not placed: {outcome.status}: {outcome.reason} (client_order_id={request.client_order_id})")
        return 1
    out.print(f"placed: order_id={order.order_id} client_order_id={order.client_order_id} status={order.status}")
    return 0 if outcome.accepted else 1


def _position(broker, symbol: str) -> Decimal:
    """The broker's position in symbol (the truth the reduce-only check needs)."""
    return next((p.quantity for p in broker.positions() if p.symbol == symbol), Decimal(0))


def _controls(settings: Settings) -> RiskControls:
    """The switches as a bot would see them: environment, flag files, and the Prefect Variables when PREFECT_API_URL
    answers (a switch set from the UI or by an emergency flow on another machine counts here too)."""
    from trader.bot import read_controls
    from trader.risk import RiskControls

    local = read_controls(settings)
    if not os.environ.get("PREFECT_API_URL"):
        return local
    from flows.switches import SwitchVariables, VariablesUnavailable, parse_switch

    variables = SwitchVariables(api_url=os.environ["PREFECT_API_URL"])
    try:
        raw = variables.read()
    except VariablesUnavailable as error:
        _say(f"[yellow]Prefect Variables not read ({error}): the environment and flag files decide[/]")
        return local
    finally:
        variables.close()

    def on(switch: Switch) -> bool:  # unset is off; a value that is not true/false counts as on (fail safe)
        value = raw[switch]
        return value is not None and parse_switch(value) is not False

    return RiskControls(local.kill_switch or on("kill_switch"), local.reduce_only or on("reduce_only"))


@contextmanager
def _manual_order_path(settings: Settings, broker, command: str) -> Iterator[OrderPath]:
    """The one order path for manual tooling, under the account's lease: refused in one line while a bot holds
    it (the emergency commands are the operator's override), released when the command is done."""
    from trader.ledger import Ledger
    from trader.ledger.lease import Holder
    from trader.orders.path import OrderPath

    ledger = Ledger(settings.database_url)
    try:
        try:
            lease = ledger.acquire_lease(settings.account, Holder.this_process("manual"), settings.lease_ttl_seconds)
        except LeaseHeld as held:
            hint = (
                f"{command} refused while a bot trades this account (nothing sent or written); stop the bot first, "
                "or use the emergency commands (kill-switch, reduce-only, cancel-all, flatten), which override it"
            )
            raise LeaseHeld(held.lease, hint) from None
        try:
            controls = _controls(settings)
            yield OrderPath(broker, ledger, controls=lambda: controls, fence=lambda: lease.fence)
        finally:
            ledger.release_lease(lease.fence, f"{command} done")
    finally:
        ledger.dispose()


def apply_order_edit(settings: Settings, spec: str) -> int:
    """Apply ORDER_ID:PREVIEW_ID from a previous edit preview."""
    from trader.runtime import build_broker

    order_id, sep, preview_id = spec.partition(":")
    if not sep or not order_id or not preview_id:
        raise ConfigError(f"--apply-order-edit: expected ORDER_ID:PREVIEW_ID (got {spec!r})")
    with _manual_order_path(settings, build_broker(settings), "--apply-order-edit") as path:
        order = path.edit(order_id, preview_id)
    out.print(
        f"edited: order_id={order.order_id} quantity={order.quantity} limit_price={order.limit_price} "
        f"status={order.status}"
    )
    return 0


def _print_preview(preview) -> None:
    r = preview.request
    table = Table(title=f"Order preview {preview.preview_id}")
    table.add_column("field")
    table.add_column("value")
    rows = [
        ("symbol", r.symbol),
        ("side", r.side),
        ("type", r.order_type),
        ("quantity", r.quantity),
        ("limit price", r.limit_price),
        ("stop price", r.stop_price),
        ("time in force", r.time_in_force),
        ("reduce only", r.reduce_only),
        ("client order id", r.client_order_id),
        ("estimated price", preview.estimated_price),
        ("quote size", preview.quote_size),
        ("commission", preview.commission),
        ("errors", "; ".join(preview.errors) or "none"),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(name, str(value))
    out.print(table)


if __name__ == "__main__":
    sys.exit(main())
