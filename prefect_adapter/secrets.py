"""Prefect Secret blocks handed to trader/ as plain settings values.

trader/ reads its Slack secrets from Settings only (SLACK_BOT_TOKEN, SLACK_WEBHOOK_URL). Where the environment leaves
one unset, the Secret block of the same purpose (`slack-bot-token`, `slack-webhook-url`) fills it here, so every flow,
task and hook that loads its settings through load_settings() below notifies the same Slack as before.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import SecretStr

from trader.settings import Settings
from trader.settings import load_settings as load_trader_settings

log = logging.getLogger(__name__)

SLACK_BOT_TOKEN_BLOCK = "slack-bot-token"
SLACK_WEBHOOK_URL_BLOCK = "slack-webhook-url"


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
