"""perps-bot: the runbook's command lines, plus `perps-bot up` for the embedded stack.

This package parses the command line and hands each command to a thin handler over trader/ functions, one module
per command group: `bot` (the bot in the foreground), `orders` (account snapshot, order preview, place, edit),
`emergency` (kill-switch, reduce-only, cancel-all, flatten), `shutdown` (the perpetuals runbook's graceful shutdown),
`checkpoint` (list, create, restore), `metrics` (the standalone exporter), `drill` (failover drills), `websocket` (the
runbook's WebSocket checks); `status` and `up` live in deployments/status.py and deployments/embedded.py. Bad input
is one line on stderr and exit 2; a failure the operator must act on, exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import NoReturn

from deployments.cli.bot import run_bot
from deployments.cli.checkpoint import checkpoint_command
from deployments.cli.emergency import EMERGENCY_COMMANDS, emergency_command
from deployments.cli.metrics import serve_metrics_file
from deployments.cli.orders import account_snapshot, apply_order_edit, preview_order
from trader.accounts import ALL_ACCOUNTS
from trader.domain import OrderType, Side, TimeInForce
from trader.errors import ConfigError, OrderRejected, TraderError
from trader.ledger.lease import LeaseHeld
from trader.settings import PROFILES, Settings, load_settings

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr, exit 2 (argparse prints the whole usage by default)."""
        self.exit(EXIT_BAD_INPUT, f"perps-bot: error: {message} (see perps-bot --help)\n")


def _decimal(flag: str) -> Callable[[str], Decimal]:
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
        choices=[
            "run",
            "up",
            "status",
            "checkpoint",
            "drill",
            "metrics",
            "accounts",
            "websocket",
            "rejections",
            "funding",
            "dashboard",
            "preflight",
            "keys",
            "shutdown",
            *EMERGENCY_COMMANDS,
        ],
        default="run",
        help="run (default): the bot or the order tooling; up: the embedded stack (supervised); status: one line "
        "per part, exit 0 healthy, 1 degraded, 2 nothing reachable; checkpoint: list|create|restore; "
        "emergency: kill-switch on|off|status, reduce-only on|off|status, cancel-all, flatten [--yes]; "
        "drill SCENARIO: a failover drill on its own namespace; metrics --metrics-file PATH: serve a metrics file; "
        "accounts list|check|deployments: the accounts ACCOUNTS_FILE declares, and the prefect file for workers; "
        "websocket test|monitor|stability|capture: the Coinbase WebSocket checks; rejections --last-hour: refused "
        "orders by reason; funding [--days 7]: funding rates and payments per future; "
        "dashboard [--refresh 5] [--window-min 15] [--url URL]: the live terminal dashboard; "
        "preflight: the startup checks (exit 0 pass, 1 warn, 2 fail); keys status|audit [--hours 24]|rotate --to "
        "backup: the key, the orders it did not place, the switch to the backup key; shutdown [--timeout 300]: the "
        "graceful shutdown (reduce-only, wait for flat, cancel all, verify, final positions, checkpoint, stop the bot; "
        "exit 0 done, 1 a step failed)",
    )
    parser.add_argument(
        "action",
        nargs="?",
        help="with checkpoint: list, create, or restore ID; with kill-switch/reduce-only: on|off|status; "
        "with accounts: list, check or deployments; with websocket: test, monitor, stability or capture; "
        "with drill: the scenario (redis-outage, engine-crash, postgres-outage, s3-outage, exchange-degradation, all)",
    )
    parser.add_argument("checkpoint_id", nargs="?", metavar="ID", help="with checkpoint restore: the checkpoint id")
    parser.add_argument("--profile", help=f"one of {', '.join(PROFILES)} (default: PERPS_PROFILE or dev)")
    parser.add_argument(
        "--account",
        help="the declared account (ACCOUNTS_FILE) a command works on (default: ACCOUNT); with cancel-all, "
        "flatten and shutdown also all; required for those when accounts are declared",
    )
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
    mode.add_argument(
        "--interval",
        type=float,
        help="seconds between cycles (default from the profile); with websocket monitor: "
        "seconds between status lines (default 5)",
    )
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
    tools.add_argument(
        "--order-leverage",
        type=_decimal("--order-leverage"),
        help="futures only: the order's leverage (at most RISK_MAX_LEVERAGE and the product's max_leverage)",
    )
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
    emergency.add_argument(
        "--note", default="", help="with an emergency command or shutdown: why (goes into the incident)"
    )
    shutdown = parser.add_argument_group("graceful shutdown (perps-bot shutdown [--timeout 300])")
    shutdown.add_argument(
        "--timeout",
        default="300",
        metavar="SECONDS",
        help="with shutdown: how long to wait for the positions to close (default 300, the runbook's)",
    )
    ws = parser.add_argument_group("WebSocket checks (perps-bot websocket test | monitor | stability | capture)")
    ws.add_argument("--channels", help="comma-separated channels (default heartbeats,ticker; user needs a CDP key)")
    ws.add_argument(
        "--duration", type=float, help="seconds (default: test 10, stability 300, capture 60; monitor: until Ctrl-C)"
    )
    ws.add_argument("--save", type=Path, help="with websocket capture: the file for the raw messages (JSON lines)")
    rejected = parser.add_argument_group("rejections (perps-bot rejections --last-hour | --hours N)")
    rejected.add_argument("--last-hour", action="store_true", help="with rejections: the last hour (the default)")
    rejected.add_argument("--hours", type=float, help="with rejections and keys audit: the last N hours")
    funding = parser.add_argument_group("funding (perps-bot funding --days N)")
    funding.add_argument("--days", type=float, help="with funding: the last N days (default 7)")
    rejected.add_argument("--to", help="with keys rotate: the key the account's bots switch to (backup or primary)")
    board = parser.add_argument_group("dashboard (perps-bot dashboard --refresh 5 --window-min 15 [--url URL])")
    board.add_argument("--refresh", type=float, help="with dashboard: seconds between redraws (default 5)")
    board.add_argument(
        "--window-min", type=float, help="with dashboard: minutes of orders and fills shown (default 15)"
    )
    board.add_argument("--url", help="with dashboard: the bot's metrics address http://HOST:PORT (default: its own)")
    up = parser.add_argument_group("embedded stack (perps-bot up)")
    up.add_argument("--port", type=int, default=4200, help="Prefect server port (default 4200)")
    up.add_argument("--no-bot", action="store_true", help="serve the deployments without starting trading-bot")
    up.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="the production layout locally (docs/deploy.md): the server on the ledger's PostgreSQL (database "
        "<ledger>_prefect) or SQLite, the gpt-trader process pool, prefect deploy, N Prefect workers in var/workers/ "
        "(default 0: serve the deployments from one runner)",
    )
    accounts = parser.add_argument_group("accounts (perps-bot accounts list | check | deployments)")
    accounts.add_argument(
        "--prefect-file",
        type=Path,
        help="with accounts deployments: where to write the generated prefect file (default prefect.accounts.yaml in "
        "the project); then: prefect deploy --all --prefect-file PATH",
    )
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
        settings = _chosen_account(settings, args)
        if args.standby and (args.command != "run" or _order_tooling(args)):
            what = args.command if args.command != "run" else "the order tooling"
            raise ConfigError(f"--standby: only for the bot (perps-bot --profile P --standby), not with {what}")
        if args.command == "drill":
            from deployments.cli.drill import drill_command
            from trader.logs import configure_logging

            configure_logging(settings.log_file, stderr=False)  # the recovery lines land in perps_bot.log
            return drill_command(settings, args.action or "", args.keys)
        if args.command == "status":
            from deployments.status import status_command

            return status_command(settings, args)
        if args.command == "metrics":
            return serve_metrics_file(settings, args)
        if args.command == "accounts":
            from deployments.cli.accounts import accounts_command

            return accounts_command(settings, args.action, args.profile, args.prefect_file)
        if args.command == "checkpoint":
            return checkpoint_command(settings, args)
        if args.command in EMERGENCY_COMMANDS:
            return emergency_command(settings, args)
        if args.command == "shutdown":
            from deployments.cli.shutdown import shutdown_command

            return shutdown_command(settings, args)
        if args.command == "websocket":
            from deployments.cli.websocket import websocket_command

            return websocket_command(settings, args)
        if args.command == "keys":
            from deployments.cli.keys import keys_command

            return keys_command(settings, args)
        if args.command == "preflight":
            from deployments.cli.preflight import preflight_command

            if args.action is not None:
                raise ConfigError(f"preflight: takes no action (got {args.action!r})")
            return preflight_command(settings)
        if args.command == "dashboard":
            from deployments.cli.dashboard import dashboard_command

            if args.action is not None:
                raise ConfigError(f"dashboard: takes no action (got {args.action!r})")
            return dashboard_command(settings, args)
        if args.command == "funding":
            from deployments.cli.funding import funding_command

            return funding_command(settings, args)
        if args.command == "rejections":
            from deployments.cli.rejections import rejections_command

            return rejections_command(settings, args)
        if args.action is not None:
            raise ConfigError(f"unexpected argument {args.action!r}: only perps-bot checkpoint takes an action")
        if args.command == "up":
            from deployments.embedded import run_embedded_stack

            return run_embedded_stack(settings, port=args.port, start_bot=not args.no_bot, workers=args.workers)
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


def _chosen_account(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings of --account's declared account (ConfigError, one line, when it is not declared); all, for
    cancel-all, flatten and shutdown, is resolved by the command itself."""
    if args.account is None:
        return settings
    if args.command in ("accounts", "up", "status"):
        raise ConfigError(f"--account: not for perps-bot {args.command} (it covers every declared account)")
    if args.account == ALL_ACCOUNTS:
        if args.command not in (*EMERGENCY_COMMANDS, "shutdown"):
            raise ConfigError(f"--account all: only with an emergency command, not with {args.command}")
        return settings
    from prefect_adapter.secrets import secret_block_value
    from trader.accounts import account_settings

    chosen = account_settings(settings, args.account, profile=args.profile, secret=secret_block_value)
    kept = {"risk_reduce_only_mode": True} if args.reduce_only else {}
    if args.metrics_file is not None:
        kept["metrics_file"] = args.metrics_file
    return chosen.model_copy(update=kept) if kept else chosen


def _order_tooling(args: argparse.Namespace) -> bool:
    return bool(args.account_snapshot or args.apply_order_edit or args.preview_order or args.place_order)
