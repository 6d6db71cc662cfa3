"""trading-bot: the bot core as one long-lived Prefect flow run.

Nothing Prefect does sits on the cycle's critical path: the cancel poll, the switch Variables, the run's log lines and
its artifact go through the orchestrator poller (prefect_adapter/orchestrator.py), and the cycle reads only
last-known values. With the Prefect API hung or gone the bot keeps cycling; the env and the STATE_DIR flag files
still stop it.
"""

from __future__ import annotations

import logging
import signal
import threading

from prefect import flow, get_run_logger
from prefect.states import Cancelled, Completed, Failed, State

from flows.hooks import BAD_INPUT_STATE, BOT_FLOW, LEASE_HELD_STATE, incident_on_crashed, incident_on_failure
from prefect_adapter.artifacts import markdown_artifact_job
from prefect_adapter.controls import bot_controls
from prefect_adapter.orchestrator import TIMEOUT_SECONDS, OrchestratorPoller
from prefect_adapter.runs import current_flow_run_id, flow_run_url
from prefect_adapter.secrets import load_settings, secret_block_value, with_secret_blocks
from tasks.bot import reconcile_before_trading
from tasks.supervision import apply_restart_policy
from trader.accounts import account_settings
from trader.bot import CycleReport
from trader.errors import ConfigError
from trader.ledger.lease import LeaseHeld
from trader.logs import configure_logging
from trader.runtime import build_bot, start_metrics
from trader.session_render import session_markdown
from trader.shutdown.stop import StopRequest
from trader.supervision import lease_wait_seconds

PROGRESS_LOG_EVERY = 60
log = logging.getLogger(__name__)


class StopBetweenCycles:
    """True once the run is being cancelled: by the runner's SIGTERM, by CANCELLING seen by the poller, or by the
    operator's stop request on this machine (STATE_DIR/STOP, written by the graceful shutdown: stop.py).

    Prefect's engine turns SIGTERM into an exception wherever the code is; the bot takes SIGTERM
    over from before its first cycle until the flow returns, so a cancel in the UI stops it between
    cycles, never inside one, and ends Cancelled, not Crashed. Called
    between cycles and in the sleep between them: it only reads the poller's last-known state.
    """

    def __init__(self, poller: OrchestratorPoller | None, operator_stop: StopRequest | None = None) -> None:
        self.poller = poller
        self.operator_stop = operator_stop
        self.reason: str | None = None
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, _signum: int, _frame: object) -> None:
        self.reason = "SIGTERM from the runner"

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def __call__(self) -> bool:
        if self.reason is None and self.poller is not None:
            self.reason = self.poller.cancel_reason()
        if self.reason is None and self.operator_stop is not None:
            self.reason = self.operator_stop()
        return self.reason is not None


@flow(
    name=BOT_FLOW,  # the zombie automation matches its runs' heartbeats by it
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
    restart_of: str | None = None,
    account: str | None = None,
    restart_event: str | None = None,
) -> dict | State:
    """Run the bot of `account` (default: the environment's ACCOUNT) until cancelled (or max_cycles): reconcile
    first, then cycle in plain Python."""
    logger = get_run_logger()
    settings = load_settings(profile=profile, risk_reduce_only_mode=True if reduce_only else None)
    if account is not None:
        try:
            settings = account_settings(settings, account, profile=profile, secret=secret_block_value)
        except ConfigError as error:
            logger.error("%s", error)
            return Failed(message=str(error), name=BAD_INPUT_STATE)
        settings = with_secret_blocks(settings)
        if reduce_only:
            settings = settings.model_copy(update={"risk_reduce_only_mode": True})
    configure_logging(settings.log_file, stderr=False)
    operator_stop = StopRequest(settings)  # a graceful shutdown's stop request made from now on stops this run
    # Started by the restart automation (deployments/automations.py): the restart policy decides before anything.
    restart = apply_restart_policy(settings, restart_of, restart_event) if restart_of else None
    if restart is not None and not restart.restart:
        return Completed(message=restart.reason)
    bot = build_bot(settings, mode="dry_run" if dry_run else None)
    run_id = current_flow_run_id()
    poller = OrchestratorPoller(
        run_id, logger, heartbeat_flow=BOT_FLOW, interval_seconds=settings.orchestrator_poll_seconds
    )
    # env and flag files every cycle OR the Variables as the poller last read them: the cycle never calls the API
    bot.controls = bot_controls(settings, poller.variables, poller.run_log)
    exporter = start_metrics(settings, bot)  # /metrics and /health on METRICS_HOST:METRICS_PORT (9102)
    if exporter is not None:
        logger.info("metrics on %s/metrics, health on %s/health", exporter.url, exporter.url)
    url = flow_run_url(run_id)
    try:
        # The lease first, outside the reconcile task: a restart waits up to TTL + 10 s for the dead holder's lease
        # (180 s on 60-s profiles), longer than that task's timeout, which is for a hung broker.
        bot.take_lease(run_id, url, lease_wait_seconds=lease_wait_seconds(settings) if restart else 0.0)
        logger.info(reconcile_before_trading(bot, run_id, url))
    except LeaseHeld as held:
        if exporter is not None:
            exporter.stop()
        refused = LeaseHeld(held.lease, "cancel that bot's run first (a restart waits for a dead holder's lease)")
        logger.error("%s", refused)
        return Failed(message=str(refused), name=LEASE_HELD_STATE)
    poller.start()
    validation = bot.validate_startup()
    if run_id is not None:
        rows = "\n".join(f"| {name} | {'ok' if ok else 'FAILED'} | {detail} |" for name, ok, detail in validation)
        table = f"| check | result | detail |\n| --- | --- | --- |\n{rows}\n"
        poller.submit(
            "post-startup-validation artifact",
            markdown_artifact_job("post-startup-validation", table, f"profile {profile}", run_id),
        )
    # A kill switch set only as a Variable (the UI, or an emergency flow on another machine) must hold from the
    # first cycle: one read before trading, bounded by the poller's own timeout so an outage delays nothing more.
    if not poller.wait_for_first_poll(TIMEOUT_SECONDS + 1):
        logger.warning(
            "Prefect Variables kill_switch/reduce_only not read before the first cycle (%s): trading starts on the "
            "environment and flag files; the Variables apply as soon as the API answers",
            poller.variables().error or "no answer yet",
        )
    stop = StopBetweenCycles(poller, operator_stop)

    def progress(report: CycleReport) -> None:
        if report.orders or report.cycle % PROGRESS_LOG_EVERY == 0:
            line = "cycle %d: %d orders, %d fills, daily PnL %.2f%%, %.1f ms"
            args = (report.cycle, len(report.orders), report.fills, report.daily_pnl_pct, report.duration_ms)
            log.info(line, *args)
            poller.run_log.info(line, *args)  # bounded: an outage drops the oldest lines, never blocks the cycle

    # The SIGTERM handler stays until the flow returns: the runner answers a cancel with SIGTERM too, and one that
    # lands while the stopped bot hands over its last lines would otherwise end a clean cancel as Crashed.
    try:
        status = "crashed"
        try:
            summary = bot.run(max_cycles, interval_seconds=cycle_interval_seconds, should_stop=stop, on_cycle=progress)
            status = "stood_down" if bot.lease_lost else "stopped"
        finally:
            try:
                bot.stop(status, note=stop.reason or bot.lease_lost)
            finally:
                if exporter is not None:
                    exporter.stop()
                if status == "crashed":
                    poller.close(flush_seconds=0)
        result = {
            "cycles": summary.cycles,
            "orders": summary.orders,
            "fills": summary.fills,
            "stopped_by": stop.reason or summary.stopped_by,
            "session_id": bot.last_session_id,
            "run_log_dropped": poller.run_log.dropped,
        }
        if run_id is not None:
            artifact = markdown_artifact_job(
                "trading-bot-session", session_markdown(result), f"profile {profile}", run_id
            )
            poller.submit("trading-bot-session artifact", artifact)
        poller.run_log.info("trading-bot finished: %s", result)
        poller.close()  # bounded: the run's last lines and the artifact wait at most a few seconds for the API
        if stop.reason:
            return Cancelled(message=f"stopped cleanly between cycles after {summary.cycles} cycles ({stop.reason})")
        if bot.lease_lost:
            return Completed(message=f"stood down after {summary.cycles} cycles: {bot.lease_lost}", data=result)
        return result
    finally:
        stop.restore()
