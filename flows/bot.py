"""trading-bot: the bot core as one long-lived Prefect flow run."""

from __future__ import annotations

import signal
import threading
import time
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from flows.hooks import incident_on_crashed, incident_on_failure
from flows.switches import bot_controls
from tasks.bot import reconcile_before_trading
from trader.bot import CycleReport
from trader.logs import configure_logging
from trader.runtime import build_bot, start_metrics
from trader.settings import load_settings

CANCEL_POLL_SECONDS = 2.0
PROGRESS_LOG_EVERY = 60


class StopBetweenCycles:
    """True once the run is being cancelled: by the runner's SIGTERM or by CANCELLING seen on the API.

    Prefect's engine turns SIGTERM into an exception wherever the code is; the bot takes SIGTERM
    over while it cycles so a cancel in the UI stops it between cycles, never inside one.
    """

    def __init__(self, flow_run_id: str | None) -> None:
        self.flow_run_id = UUID(flow_run_id) if flow_run_id else None
        self.reason: str | None = None
        self._last_poll = 0.0
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, _signum: int, _frame: object) -> None:
        self.reason = "SIGTERM from the runner"

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def __call__(self) -> bool:
        if self.reason is None and self.flow_run_id and time.monotonic() - self._last_poll >= CANCEL_POLL_SECONDS:
            self._last_poll = time.monotonic()
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(self.flow_run_id).state
            if state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED):
                self.reason = f"flow run is {state.type.value}"
        return self.reason is not None


@flow(
    name="trading-bot",
    log_prints=False,
    persist_result=False,
    on_failure=[incident_on_failure],
    on_crashed=[incident_on_crashed],
)
def trading_bot(
    profile: str = "dev",
    max_cycles: int | None = None,
    cycle_interval_seconds: float | None = None,
    reduce_only: bool = False,
    dry_run: bool = False,
) -> dict | State:
    """Run the bot until cancelled (or max_cycles): reconcile first, then cycle in plain Python."""
    logger = get_run_logger()
    settings = load_settings(profile=profile, risk_reduce_only_mode=True if reduce_only else None)
    configure_logging(settings.log_file, stderr=False)
    bot = build_bot(settings, mode="dry_run" if dry_run else None)
    bot.controls = bot_controls(settings, logger)  # env and flag files OR the Prefect Variables, every cycle
    exporter = start_metrics(settings, bot)  # /metrics and /health on METRICS_HOST:METRICS_PORT (9102)
    if exporter is not None:
        logger.info("metrics on %s/metrics, health on %s/health", exporter.url, exporter.url)
    run_id = str(flow_run.get_id()) if flow_run.get_id() else None
    logger.info(reconcile_before_trading(bot, run_id))
    stop = StopBetweenCycles(run_id)

    def progress(report: CycleReport) -> None:
        if report.orders or report.cycle % PROGRESS_LOG_EVERY == 0:
            logger.info(
                "cycle %d: %d orders, %d fills, daily PnL %.2f%%, %.1f ms",
                report.cycle,
                len(report.orders),
                report.fills,
                report.daily_pnl_pct,
                report.duration_ms,
            )

    status = "crashed"
    try:
        summary = bot.run(max_cycles, interval_seconds=cycle_interval_seconds, should_stop=stop, on_cycle=progress)
        status = "stopped"
    finally:
        bot.stop(status, note=stop.reason)
        stop.restore()
        if exporter is not None:
            exporter.stop()
    result = {
        "cycles": summary.cycles,
        "orders": summary.orders,
        "fills": summary.fills,
        "stopped_by": stop.reason or summary.stopped_by,
        "session_id": bot.last_session_id,
    }
    create_markdown_artifact(
        key="trading-bot-session",
        markdown="\n".join(
            ["# trading-bot session", "", "| field | value |", "|---|---|"]
            + [f"| {k} | {v} |" for k, v in result.items()]
        ),
        description=f"profile {profile}",
    )
    logger.info("trading-bot finished: %s", result)
    if stop.reason:
        return Cancelled(message=f"stopped cleanly between cycles after {summary.cycles} cycles ({stop.reason})")
    return result
