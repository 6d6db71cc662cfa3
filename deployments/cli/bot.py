"""perps-bot [--profile P] [--dev-fast | --dry-run | --cycles N] [--standby]: the bot in the foreground.

The account's lease comes first (a second bot on a held account stops there), then the metrics exporter, then the
cycles until Ctrl-C, SIGTERM, --cycles or the operator's stop request (STATE_DIR/STOP, written by perps-bot shutdown
after this bot started: trader/shutdown/stop.py); one line per cycle and per order sent or refused.
"""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING

from deployments.cli.output import out, say
from trader.errors import ConfigError
from trader.settings import Settings

if TYPE_CHECKING:
    from trader.bot import CycleReport
    from trader.shutdown.stop import StopRequest


def run_bot(settings: Settings, args: argparse.Namespace) -> int:
    """--dev-fast: one cycle; --dry-run: one cycle, nothing sent; otherwise cycle until Ctrl-C or --cycles."""
    from prefect_adapter.secrets import with_secret_blocks
    from trader.logs import configure_logging
    from trader.runtime import build_bot, start_metrics
    from trader.shutdown.stop import StopRequest

    operator_stop = StopRequest(settings)  # a stop request made from now on, also while a standby waits
    if args.cycles is not None and args.cycles < 1:
        raise ConfigError(f"--cycles: must be at least 1 (got {args.cycles})")
    if args.standby and (args.dev_fast or args.dry_run):
        flag = "--dev-fast" if args.dev_fast else "--dry-run"
        raise ConfigError(f"--standby: not with {flag} (a standby waits to take over a running bot; drop one of them)")
    configure_logging(settings.log_file)
    # Slack secrets the environment leaves unset come from the Prefect Secret blocks (when an API is configured).
    bot = build_bot(with_secret_blocks(settings), mode="dry_run" if args.dry_run else None)
    cycles = 1 if (args.dev_fast or args.dry_run) else args.cycles
    one_shot = args.dev_fast or args.dry_run
    # The lease first: a second bot on a held account stops here, before the exporter or any recovery.
    bot.take_lease(lease_wait_seconds=float("inf") if args.standby else 0.0)
    if operator_stop() is not None:  # a standby given the account by a graceful shutdown: it was stopped too
        bot.stop("stopped")
        out.print(f"0 cycle(s): stopped before trading: {operator_stop.reason}", soft_wrap=True)
        return 0
    # A one-cycle smoke run writes --metrics-file but does not take the exporter's port from a running bot.
    exporter = start_metrics(settings.model_copy(update={"metrics_enabled": False}) if one_shot else settings, bot)
    if exporter is not None:
        out.print(f"metrics on {exporter.url}/metrics, health on {exporter.url}/health")
    stop = _StopFlag(operator_stop)
    bot.start()
    status = "crashed"
    try:
        if bot.mode != "dry_run":
            bot.validate_startup()  # the runbook's post-startup validation: one line in perps_bot.log
        summary = bot.run(cycles, interval_seconds=args.interval, should_stop=stop, on_cycle=_print_cycle)
        status = "stopped"
    finally:
        bot.stop(status, note=operator_stop.reason)
        if exporter is not None:
            exporter.stop()
    stopped_by = operator_stop.reason or summary.stopped_by
    out.print(
        f"{summary.cycles} cycle(s), {summary.orders} order(s) sent, {summary.fills} fill(s); stopped: {stopped_by}",
        soft_wrap=True,
    )
    return 0


class _StopFlag:
    """Ctrl-C, SIGTERM or the operator's stop request ends the run between cycles; a second Ctrl-C aborts."""

    def __init__(self, operator_stop: StopRequest) -> None:
        self.operator_stop = operator_stop
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)
        signal.signal(signal.SIGINT, self._request)

    def _request(self, signum: int, _frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self) -> bool:
        return self.requested or self.operator_stop() is not None


def _print_cycle(report: CycleReport) -> None:
    prices = ", ".join(f"{s} {p}" for s, p in report.prices.items())
    say(
        f"cycle {report.cycle} at {report.at:%Y-%m-%d %H:%M} UTC: {prices}; "
        f"daily PnL {report.daily_pnl_pct:.2f}%; {report.duration_ms:.1f} ms"
    )  # one line each, piped or not
    for sent in report.orders:
        r = sent.request
        verb = "would send" if sent.status == "dry_run" else sent.status
        price = f" @ {r.limit_price}" if r.limit_price else ""
        say(
            f"  {verb}: {r.side} {r.quantity} {r.symbol} {r.order_type}{price}"
            f"{' reduce-only' if r.reduce_only else ''} [{r.client_order_id}] {sent.reason}"
        )
    for intent, reason in report.refused:
        say(f"  refused by risk: {intent.side} {intent.quantity} {intent.symbol}: {reason}")
    if not report.orders and not report.refused:
        say("  no orders: strategy holds")
