"""Tasks around the bot's long-lived loop (the loop itself makes no task runs: PrefectHQ/prefect#12668)."""

from __future__ import annotations

from prefect import task

from tasks.policies import BOT_START
from trader.bot import TradingBot
from trader.ledger.lease import LeaseHeld


# Retries are safe: start() acquires the lease before anything else and refuses (LeaseHeld) with nothing written;
# a failed attempt gives its lease back (stop), so the retry, a new holder instance, is not refused by its own lease;
# an unfinished recovery is run again from the ledger by the next attempt.
@task(name="reconcile-before-trading", tags=["broker", "ledger"], **BOT_START.options())
def reconcile_before_trading(bot: TradingBot, flow_run_id: str | None, flow_run_url: str | None = None) -> str:
    """Take the account's lease (unless held already), reconcile open orders and positions with the broker, open the
    trading session."""
    try:
        report = bot.start(flow_run_id=flow_run_id, flow_run_url=flow_run_url)
    except LeaseHeld:
        raise
    except Exception as error:
        bot.stop("crashed", note=f"start failed: {type(error).__name__}: {error}")
        raise
    return report.summary() if report else "dry-run: no reconciliation"
