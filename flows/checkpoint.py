"""checkpoint: a scheduled checkpoint of the bot's state (the bot also checkpoints itself every 5 minutes).

Useful when the bot is not running (the state still changes through reconciliation and manual orders) and as
the runbook's on-demand "take a checkpoint now" from the UI or `prefect deployment run 'checkpoint/every-5-minutes'`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.hooks import RUNBOOK_HOOKS
from trader.ledger import Ledger
from trader.runtime import build_broker
from trader.settings import load_settings
from trader.state.checkpoints import CheckpointInfo, checkpoint_store_from_settings, snapshot_from_ledger


@task(
    name="create checkpoint",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    cache_policy=NO_CACHE,
)
def create_checkpoint(profile: str, reason: str, with_broker: bool) -> CheckpointInfo:
    settings = load_settings(profile=profile)
    broker = build_broker(settings, read_only=True) if with_broker else None
    store = checkpoint_store_from_settings(settings)
    try:
        return store.create(snapshot_from_ledger(Ledger(settings.database_url), broker), reason=reason)
    finally:
        store.dispose()


@flow(
    name="checkpoint",
    log_prints=False,
    persist_result=False,
    timeout_seconds=300,
    **RUNBOOK_HOOKS,
)
def checkpoint(profile: str = "dev", reason: str = "scheduled", with_broker: bool = True) -> str:
    """Create a checkpoint (ledger positions and open orders, broker balances); returns its id."""
    info = create_checkpoint(profile, reason, with_broker)
    get_run_logger().info("checkpoint %s created: %d bytes, sha256 %s", info.id, info.size_bytes, info.sha256[:12])
    create_markdown_artifact(
        key="checkpoint",
        markdown=f"# Checkpoint {info.id}\n\n- reason: {reason}\n- size: {info.size_bytes} bytes"
        f"{' (gzip)' if info.compressed else ''}\n- sha256: `{info.sha256}`\n- cold copy: `{info.cold_key}`",
    )
    return info.id
