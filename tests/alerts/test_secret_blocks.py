"""prefect_adapter/secrets.py on a real (test-harness) Prefect server: Secret blocks become Settings values."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from prefect_adapter.secrets import SLACK_BOT_TOKEN_BLOCK, SLACK_WEBHOOK_URL_BLOCK, with_secret_blocks
from tests.alerts.conftest import SLACK_CHANNEL, SLACK_TOKEN
from trader.alerts.notifier import SLACK_API_URL_ENV, SlackNotifier, notifier_from_settings
from trader.settings import Settings
from trader.testing.slack_recorder import SlackRecorder

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def secret_blocks() -> Iterator[None]:
    """The two Slack Secret blocks, deleted after the test (the hook tests must not find them)."""
    from prefect.blocks.system import Secret

    Secret(value=SLACK_TOKEN).save(SLACK_BOT_TOKEN_BLOCK, overwrite=True)
    Secret(value="http://127.0.0.1:9/not-used").save(SLACK_WEBHOOK_URL_BLOCK, overwrite=True)
    try:
        yield
    finally:
        Secret.delete(SLACK_BOT_TOKEN_BLOCK)
        Secret.delete(SLACK_WEBHOOK_URL_BLOCK)


@pytest.mark.usefixtures("secret_blocks")
def test_the_bot_token_block_reaches_the_notifier_as_a_settings_value(slack: SlackRecorder) -> None:
    settings = with_secret_blocks(Settings(slack_channel=SLACK_CHANNEL, slack_bot_token=None, slack_webhook_url=None))

    assert settings.slack_bot_token is not None and settings.slack_bot_token.get_secret_value() == SLACK_TOKEN
    assert settings.slack_webhook_url is None  # the bot can post: the webhook block is not read
    assert isinstance(notifier_from_settings(settings, {SLACK_API_URL_ENV: slack.base_url}), SlackNotifier)


@pytest.mark.usefixtures("secret_blocks")
def test_a_secret_set_in_the_environment_wins_over_its_block() -> None:
    mine = SecretStr("xoxb-from-the-environment")
    settings = with_secret_blocks(Settings(slack_channel=SLACK_CHANNEL, slack_bot_token=mine))

    assert settings.slack_bot_token is mine
