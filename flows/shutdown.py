"""graceful-shutdown: the perpetuals runbook's "Graceful Shutdown", on demand.

One task per step of the runbook's section, one after another (trader/shutdown/procedure.py keeps the order and
the rule that a failed step ends the sequence):
 1. reduce-only on (STATE_DIR/REDUCE_ONLY),
 2. wait for flat, up to timeout_seconds (default 300): the shutdown takes the account's lease, so its running bot
    stands down between cycles wherever it runs, then reduce-only market exits go through the one order path until
    the account's symbols are flat; the `graceful-shutdown-progress` artifact shows the exposure closed,
 3. cancel all working orders,
 4. verify that the broker lists no open order,
 5. record the final positions (and the balances as a ledger snapshot),
 6. checkpoint (reason "graceful shutdown"),
 7. stop the bot: the stop request STATE_DIR/STOP for any bot of the account on this machine, the account's
    trading-bot runs cancelled (an operator's cancel: the restart automation answers only Crashed, and the restart
    policy skips a run ever Cancelling), then proof that the bot that held the account has stopped.

Each account's `graceful-shutdown` table artifact has one row per step (step, result, detail, seconds). A failed
step leaves the later ones "not run", opens a SEV-2 incident (graceful-shutdown) and ends the run Failed, named
IncidentOpened so the failure hook opens no second incident; a shutdown that goes through resolves it.

Accounts, as emergency-cancel-all and emergency-flatten: with declared accounts `account` is required (a name, or
all); without a file, the environment's account. From the UI, `prefect deployment run 'graceful-shutdown/on-demand'`,
or without Prefect `perps-bot shutdown [--timeout 300]`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from flows.accounts import bad_input, for_each_account, named_accounts
from flows.hooks import INCIDENT_OPENED_STATE, RUNBOOK_HOOKS
from prefect_adapter.artifacts import ProgressArtifact, account_key, publish_table
from prefect_adapter.runs import PrefectBotRuns, current_flow_run_id, flow_run_url
from tasks.shutdown import STEP_TASKS, open_incident, resolve_incident
from trader.accounts import declared
from trader.errors import ConfigError
from trader.settings import Settings
from trader.shutdown.procedure import GracefulShutdown
from trader.shutdown.results import FlatProgress

FLOW = "graceful-shutdown"
Result = dict[str, Any] | State  # one account's result (no accounts file), else {account: result}


@flow(name=FLOW, log_prints=False, persist_result=False, timeout_seconds=3600, **RUNBOOK_HOOKS)
def graceful_shutdown(
    profile: str = "dev", account: str | None = None, timeout_seconds: float = 300, reason: str = ""
) -> Result:
    """Graceful Shutdown: reduce-only, wait for flat (timeout_seconds), cancel all, verify, record the final
    positions, checkpoint, stop the bot. With declared accounts, `account` is required: a name, or "all"."""
    try:
        if not timeout_seconds > 0:
            raise ConfigError(
                f"{FLOW}: timeout_seconds must be more than 0 (got {timeout_seconds:g}); e.g. 300, the runbook's"
            )
        accounts = named_accounts(FLOW, account, profile)
    except ConfigError as error:
        return bad_input(error)
    request_id = str(current_flow_run_id())
    results = for_each_account(
        FLOW,
        account,
        profile,
        lambda settings: _shutdown_of(settings, timeout_seconds, request_id, reason),
        accounts=accounts,
        figures=_row,
    )
    if isinstance(results, State):
        return results
    by_account = results if declared(accounts[0]) is not None else {accounts[0].account: results}
    failed = {name: r for name, r in by_account.items() if r["status"] != "done"}
    if failed:
        return Failed(
            message="; ".join(
                f"{name}: {r['summary']} (SEV-2 incident #{r['incident_id']})" for name, r in failed.items()
            ),
            name=INCIDENT_OPENED_STATE,
        )
    return results


def _shutdown_of(settings: Settings, timeout_seconds: float, request_id: str, reason: str) -> dict[str, Any]:
    """One account's seven steps, its table artifact, and its SEV-2 incident opened (or resolved)."""
    logger = get_run_logger()
    progress = ProgressArtifact(
        account_key(f"{FLOW}-progress", settings.account), f"graceful shutdown of {settings.account}: wait for flat"
    )
    last: list[FlatProgress] = []

    def show(now: FlatProgress) -> None:
        last[:] = [now]
        progress.set(now.percent, now.describe())

    bot_runs = PrefectBotRuns(unnamed_runs=declared(settings) is None)
    options: dict[str, Any] = {"request_id": request_id, "reason": reason, "bot_runs": bot_runs, "progress": show}
    with GracefulShutdown(settings, timeout_seconds, migrate=False, **options) as shutdown:
        result = shutdown.run(lambda step: STEP_TASKS[step.key](shutdown))
    if last:
        progress.set(last[0].percent, last[0].describe(), force=True)
    summary = result.summary()
    publish_table(account_key(FLOW, settings.account), result.rows(), description=summary[:500])
    incident_id = None
    if result.ok:
        if resolve_incident(settings):
            logger.info("graceful-shutdown incident of account %s resolved", settings.account)
        logger.info(summary)
    else:
        url = flow_run_url(current_flow_run_id())
        incident_id = open_incident(settings, result, reason, url)
        logger.error("%s; SEV-2 incident #%s", summary, incident_id)
    failed = result.failed
    return {
        "status": "done" if result.ok else "failed",
        "summary": summary,
        "failed_step": failed.step.label if failed is not None else None,
        "incident_id": incident_id,
        "checkpoint_id": result.checkpoint_id,
        "final_positions": {symbol: str(quantity) for symbol, quantity in result.final_positions.items()},
        "steps": result.rows(),
    }


def _row(result: dict[str, Any]) -> dict[str, object]:
    """An account's row in the summary: done or the step that failed, the incident, the checkpoint."""
    return {
        "status": result["status"],
        "failed step": result["failed_step"] or "",
        "incident": result["incident_id"] or "",
        "checkpoint": result["checkpoint_id"] or "",
    }
