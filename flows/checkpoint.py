"""checkpoint: a scheduled checkpoint of the bot's state (the bot also checkpoints itself every 5 minutes).

Useful when the bot is not running (the state still changes through reconciliation and manual orders) and as
the runbook's on-demand "take a checkpoint now" from the UI or `prefect deployment run 'checkpoint/every-5-minutes'`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from flows.accounts import for_each_account
from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.artifacts import account_key, publish_markdown
from tasks.checkpoint import create_checkpoint
from trader.settings import Settings
from trader.state.checkpoint_render import checkpoint_markdown


@flow(
    name="checkpoint",
    log_prints=False,
    persist_result=False,
    timeout_seconds=300,
    **RUNBOOK_HOOKS,
)
def checkpoint(
    profile: str = "dev", reason: str = "scheduled", with_broker: bool = True, account: str | None = None
) -> str | dict[str, Any] | State:
    """Checkpoint each account (unset or "all": every declared account; a name: that one); returns its id."""
    return for_each_account(
        "checkpoint",
        account,
        profile,
        lambda settings: checkpoint_account(settings, reason, with_broker),
        figures=lambda checkpoint_id: {"checkpoint": checkpoint_id},
    )


def checkpoint_account(settings: Settings, reason: str, with_broker: bool) -> str:
    """Create a checkpoint (ledger positions and open orders, broker balances); returns its id."""
    info = create_checkpoint(settings, reason, with_broker)
    get_run_logger().info(
        "checkpoint %s of %s created: %d bytes, sha256 %s", info.id, settings.account, info.size_bytes, info.sha256[:12]
    )
    publish_markdown(account_key("checkpoint", settings.account), checkpoint_markdown(info, reason))
    return info.id
