"""Prefect Secret blocks handed to trader/ as plain settings values.

trader/ reads its Slack secrets from Settings only (SLACK_BOT_TOKEN, SLACK_WEBHOOK_URL). Where the environment leaves
one unset, the Secret block of the same purpose (`slack-bot-token`, `slack-webhook-url`) fills it here, so every flow,
task and hook that loads its settings through load_settings() below notifies the same Slack as before.

The backup Coinbase key of `perps-bot keys rotate --to backup` may live in two blocks, `coinbase-backup-api-key` (the
key's name) and `coinbase-backup-api-secret` (its PEM private key), read only where COINBASE_BACKUP_KEY_FILE and
COINBASE_BACKUP_API_KEY/_SECRET are unset (backup_key_from_secret_blocks). No value read here is ever logged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from trader.errors import ConfigError
from trader.settings import Settings
from trader.settings import load_settings as load_trader_settings

if TYPE_CHECKING:
    from trader.coinbase.http import Credentials

log = logging.getLogger(__name__)

SLACK_BOT_TOKEN_BLOCK = "slack-bot-token"
SLACK_WEBHOOK_URL_BLOCK = "slack-webhook-url"
BACKUP_API_KEY_BLOCK = "coinbase-backup-api-key"
BACKUP_API_SECRET_BLOCK = "coinbase-backup-api-secret"


def secret_block_value(block_name: str) -> SecretStr | None:
    """The value of a Prefect Secret block, or None (no Prefect API configured, no such block, any error)."""
    try:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():  # without an API, loading would start a temporary server
            return None
        from prefect.blocks.system import Secret

        value = Secret.load(block_name, _sync=True).get()  # type: ignore[call-arg,union-attr]
    except Exception as error:
        log.debug("no Prefect Secret block %s (%s)", block_name, type(error).__name__)
        return None
    return SecretStr(str(value)) if value else None


def backup_key_from_secret_blocks() -> Credentials | None:
    """The backup key from its two Secret blocks, checked (an EC P-256 PEM, a name); None when neither exists.
    ConfigError, naming the blocks and never their values, when only one exists or the secret is not a CDP key."""
    from trader.coinbase.http import credentials_from

    name = secret_block_value(BACKUP_API_KEY_BLOCK)
    secret = secret_block_value(BACKUP_API_SECRET_BLOCK)
    if name is None and secret is None:
        return None
    if name is None or secret is None:
        missing, present = (
            (BACKUP_API_KEY_BLOCK, BACKUP_API_SECRET_BLOCK)
            if name is None
            else (BACKUP_API_SECRET_BLOCK, BACKUP_API_KEY_BLOCK)
        )
        raise ConfigError(
            f"Prefect Secret block {missing} is missing ({present} exists): create both, or neither and set "
            "COINBASE_BACKUP_KEY_FILE"
        )
    return credentials_from(
        name.get_secret_value(), secret.get_secret_value(), source=f"Prefect Secret block {BACKUP_API_SECRET_BLOCK}"
    )


def deliver_block_events(timeout: float = 10.0) -> None:
    """Send the `prefect.block.secret.loaded` events of the blocks read so far now (the server's record of who read
    a secret), for a short-lived process such as the CLI: at its exit Prefect's events worker would print "Still
    processing items" into the command's answer instead."""
    progress = logging.getLogger("EventsWorker")  # the drain's own "Still processing items" line, too
    level = progress.level
    progress.setLevel(logging.ERROR)
    try:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=timeout, at_exit=False)
    except Exception as error:
        log.debug("block events not delivered (%s)", type(error).__name__)
    finally:
        progress.setLevel(level)


def with_secret_blocks(settings: Settings) -> Settings:
    """The settings with the Slack secrets the environment leaves unset taken from the Prefect Secret blocks.

    The same choice the notifier makes (bot token + channel > webhook): the token block is read only when a channel
    is set, the webhook block only when the bot cannot post.
    """
    updates: dict[str, SecretStr] = {}
    token = settings.slack_bot_token
    if settings.slack_channel and token is None:
        token = secret_block_value(SLACK_BOT_TOKEN_BLOCK)
        if token is not None:
            updates["slack_bot_token"] = token
    bot_can_post = bool(settings.slack_channel) and token is not None
    if not bot_can_post and settings.slack_webhook_url is None:
        webhook = secret_block_value(SLACK_WEBHOOK_URL_BLOCK)
        if webhook is not None:
            updates["slack_webhook_url"] = webhook
    return settings.model_copy(update=updates) if updates else settings


def load_settings(**overrides: Any) -> Settings:
    """trader.settings.load_settings, then with_secret_blocks: the settings a flow, task or hook works with."""
    return with_secret_blocks(load_trader_settings(**overrides))
