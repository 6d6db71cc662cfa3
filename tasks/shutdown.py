"""Tasks of the graceful-shutdown flow: one per step of the runbook's Graceful Shutdown, each with the retries its
step can take, and the SEV-2 incident (trader/shutdown/procedure.py does the work; these only name and retry it).

Every step is idempotent, so a retry is safe: the flag file is set again, the wait for flat keeps its first
attempt's deadline and finds the exits it already sent (their client_order_ids come from the request id), cancel-all
finds nothing left, a checkpoint is taken afresh, the stop request is written again.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import task

from tasks.policies import ALERT, EXCHANGE_READ, EXCHANGE_WRITE, FLAG_FILE, NETWORK_READ, TaskPolicy
from trader.settings import Settings
from trader.shutdown.procedure import GracefulShutdown, open_shutdown_incident, resolve_shutdown_incident
from trader.shutdown.results import ShutdownResult

# The wait retries its own reads until its deadline; a second attempt would only wait on the same deadline.
WAIT = TaskPolicy()


@task(name="1. reduce-only on", tags=["shutdown", "state"], **FLAG_FILE.options())
def set_reduce_only(shutdown: GracefulShutdown) -> str:
    """STATE_DIR/REDUCE_ONLY: the bot only shrinks positions from its next cycle."""
    return shutdown.reduce_only()


@task(name="2. wait for flat", tags=["shutdown", "broker", "ledger"], **WAIT.options())
def wait_for_flat(shutdown: GracefulShutdown) -> str:
    """Take the account (the running bot stands down), then reduce-only exits until flat or the timeout."""
    return shutdown.wait_for_flat()


@task(name="3. cancel all working orders", tags=["shutdown", "broker", "ledger"], **EXCHANGE_WRITE.options())
def cancel_working_orders(shutdown: GracefulShutdown) -> str:
    """Every working order cancelled in batches of 100 and recorded in the ledger."""
    return shutdown.cancel_all()


@task(name="4. verify no open orders", tags=["shutdown", "broker"], **EXCHANGE_READ.options())
def verify_no_open_orders(shutdown: GracefulShutdown) -> str:
    """Fails, naming them, when the broker still lists an open order."""
    return shutdown.verify_no_orders()


@task(name="5. record final positions", tags=["shutdown", "broker", "ledger"], **EXCHANGE_READ.options())
def record_final_positions(shutdown: GracefulShutdown) -> str:
    """Every position the broker reports, and its balances as a ledger balance snapshot."""
    return shutdown.final_positions()


@task(name="6. checkpoint", tags=["shutdown", "state"], **NETWORK_READ.options())
def save_checkpoint(shutdown: GracefulShutdown) -> str:
    """A checkpoint of the ledger and the broker (a retry takes a fresh one)."""
    return shutdown.checkpoint()


@task(name="7. stop the bot", tags=["shutdown", "prefect"], **FLAG_FILE.options())
def stop_the_bot(shutdown: GracefulShutdown) -> str:
    """The stop request, the account's trading-bot runs cancelled, and proof the bot stopped (a retry waits again)."""
    return shutdown.stop_bot()


# The runbook's Graceful Shutdown, step key -> its task (trader.shutdown.results.STEPS keeps the order).
STEP_TASKS: dict[str, Callable[[GracefulShutdown], str]] = {
    "reduce-only": set_reduce_only,
    "wait-for-flat": wait_for_flat,
    "cancel-all": cancel_working_orders,
    "verify-no-orders": verify_no_open_orders,
    "final-positions": record_final_positions,
    "checkpoint": save_checkpoint,
    "stop-bot": stop_the_bot,
}


@task(name="open-shutdown-incident", tags=["alerts"], **ALERT.options())
def open_incident(settings: Settings, result: ShutdownResult, reason: str, flow_run_url: str | None) -> int | None:
    """The SEV-2 incident of a shutdown that stopped at a failed step, announced through Slack when configured."""
    return open_shutdown_incident(settings, result, reason, flow_run_url)


@task(name="resolve-shutdown-incident", tags=["alerts"], **ALERT.options())
def resolve_incident(settings: Settings) -> bool:
    """A shutdown that went through resolves the account's open graceful-shutdown incident."""
    return resolve_shutdown_incident(settings)
