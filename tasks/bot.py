"""Tasks around the bot's long-lived loop (the loop itself makes no task runs: PrefectHQ/prefect#12668)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from trader.bot import TradingBot


@task(
    name="reconcile-before-trading",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    timeout_seconds=120,
    tags=["broker", "ledger"],
    cache_policy=NO_CACHE,
)
def reconcile_before_trading(bot: TradingBot, flow_run_id: str | None) -> str:
    """Reconcile open orders and positions with the broker, then open the trading session."""
    report = bot.start(flow_run_id=flow_run_id)
    return report.summary() if report else "dry-run: no reconciliation"
