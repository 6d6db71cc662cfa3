"""checkpoint: a scheduled checkpoint of the bot's state (the bot also checkpoints itself every 5 minutes).

Useful when the bot is not running (the state still changes through reconciliation and manual orders) and as
the runbook's on-demand "take a checkpoint now" from the UI or `prefect deployment run 'checkpoint/every-5-minutes'`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.artifacts import publish_markdown
from tasks.checkpoint import create_checkpoint
from tasks.ledger import migrate_ledger
from trader.settings import load_settings
from trader.state.checkpoint_render import checkpoint_markdown


@flow(
    name="checkpoint",
    log_prints=False,
    persist_result=False,
    timeout_seconds=300,
    **RUNBOOK_HOOKS,
)
def checkpoint(profile: str = "dev", reason: str = "scheduled", with_broker: bool = True) -> str:
    """Create a checkpoint (ledger positions and open orders, broker balances); returns its id."""
    settings = load_settings(profile=profile)
    migrate_ledger(settings)
    info = create_checkpoint(settings, reason, with_broker)
    get_run_logger().info("checkpoint %s created: %d bytes, sha256 %s", info.id, info.size_bytes, info.sha256[:12])
    publish_markdown("checkpoint", checkpoint_markdown(info, reason))
    return info.id
