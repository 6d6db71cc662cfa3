"""Telling the operator: a Notifier protocol with log, Slack (bot token) and incoming-webhook implementations.

Every message names the incident's account first (`[alpha] SEV-2: ...`, `[alpha] update: ...`): one channel hears
from every account's bots and flows, and the same check failing in two accounts is two incidents.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import SecretStr

from trader.alerts.severity import SEVERITY_MATRIX, first_actions
from trader.errors import TraderError
from trader.ledger import Incident
from trader.settings import Settings

log = logging.getLogger(__name__)

SLACK_API_URL_ENV = "SLACK_API_URL"  # point the bot at another Slack API (the test recorder); default slack.com
DEFAULT_TIMEOUT_SECONDS = 5
MAX_RATE_LIMIT_WAIT_SECONDS = 10  # a longer Retry-After is not waited out: the incident stays pending instead
MAX_EVIDENCE_CHARS = 2500  # a section's text may hold 3000 characters
_SLACK_SECRET = re.compile(r"xox[a-z]-[A-Za-z0-9-]+|https?://hooks\.slack\.com/\S+")


class AlertError(TraderError):
    """Alerting could not tell the operator."""


class AlertDeliveryError(AlertError):
    """Slack (or the webhook) refused or did not answer; the message never carries a secret."""


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """The text with the given secrets and anything shaped like a Slack token or webhook URL replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _SLACK_SECRET.sub("[redacted]", text)


@dataclass(frozen=True)
class IncidentNotice:
    """What a notifier is told about one incident of the ledger (of one account)."""

    account: str
    id: int
    fingerprint: str
    severity: str
    kind: str
    title: str
    evidence: str
    flow_run_url: str | None = None
    resolved: bool = False

    @classmethod
    def from_record(cls, row: Incident) -> IncidentNotice:
        """The notice for a ledger incident (its source holds the kind and the flow run URL)."""
        assert row.id is not None
        kind, url = decode_source(row.source)
        resolved = row.status == "resolved"
        return cls(row.account, row.id, row.fingerprint, row.severity, kind, row.title, row.detail, url, resolved)


def encode_source(kind: str, flow_run_url: str | None) -> str:
    """An incident's ledger `source`: its kind, then the flow run URL after one space when there is one."""
    return f"{kind} {flow_run_url}" if flow_run_url else kind


def decode_source(source: str) -> tuple[str, str | None]:
    """The kind and flow run URL stored by encode_source."""
    kind, _, url = source.partition(" ")
    return kind, url or None


class Notifier(Protocol):
    """Where incidents are announced; send returns the message's id (Slack ts) when threads are possible."""

    def send(self, incident: IncidentNotice) -> str | None: ...

    def update(self, incident: IncidentNotice, ts: str | None) -> None: ...

    def resolve(self, incident: IncidentNotice, ts: str | None) -> None: ...


# --- message text ---------------------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Slack mrkdwn control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def account_tag(incident: IncidentNotice) -> str:
    """The prefix naming the incident's account in every message: `[alpha]`."""
    return f"[{_escape(incident.account)}]"


def fallback_text(incident: IncidentNotice) -> str:
    """The plain-text version of an incident (notifications, screen readers, the webhook)."""
    evidence = incident.evidence.strip().splitlines()[0] if incident.evidence.strip() else "no evidence recorded"
    text = (
        f"{account_tag(incident)} {incident.severity} incident #{incident.id}: {_escape(incident.title)} - "
        f"{_escape(_clip(evidence, 300))}. "
        f"First actions: {'; '.join(first_actions(incident.severity))}."
    )
    if incident.flow_run_url:
        text += f" Flow run: {incident.flow_run_url}"
    return text


def incident_blocks(incident: IncidentNotice) -> list[dict[str, Any]]:
    """Block Kit for a new incident: severity header, what failed, evidence, first actions, flow-run button."""
    level = SEVERITY_MATRIX[incident.severity]  # type: ignore[index]
    actions = "\n".join(f"• {action}" for action in level.first_actions)
    context = f"account {_escape(incident.account)} · incident #{incident.id} · {incident.kind} · "
    context += f"`{_escape(incident.fingerprint)}`"
    evidence = _clip(incident.evidence.strip() or "no evidence recorded", MAX_EVIDENCE_CHARS)
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _clip(f"[{incident.account}] {incident.severity}: {incident.title}", 150),
            },
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"*Account:* {_escape(incident.account)}\n*What failed:* {_escape(incident.title)}\n"
                f"*{incident.severity}:* {_escape(level.criteria)}",
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Evidence*\n```{_escape(evidence)}```"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*First actions (runbook)*\n{_escape(actions)}"}},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": context}],
        },
    ]
    if incident.flow_run_url:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open flow run"},
                        "url": incident.flow_run_url,
                        "action_id": "open_flow_run",
                    }
                ],
            }
        )
    return blocks


def update_text(incident: IncidentNotice) -> str:
    """The reply when an open incident happens again."""
    evidence = _escape(_clip(incident.evidence.strip(), MAX_EVIDENCE_CHARS))
    return f"{account_tag(incident)} update: {_escape(incident.title)} happened again - {evidence}"


def resolve_text(incident: IncidentNotice) -> str:
    """The message when the check passes again."""
    return (
        f"{account_tag(incident)} resolved: {_escape(incident.title)} "
        f"(passes again; {incident.severity} incident #{incident.id})"
    )


# --- implementations ------------------------------------------------------------------------------------------------


class LogNotifier:
    """Writes incidents to the `trader.alerts` log (no Slack configured)."""

    def send(self, incident: IncidentNotice) -> str | None:
        log.error("incident: %s", redact(fallback_text(incident)))
        return None

    def update(self, incident: IncidentNotice, ts: str | None) -> None:
        log.error("incident #%d %s", incident.id, redact(update_text(incident)))

    def resolve(self, incident: IncidentNotice, ts: str | None) -> None:
        log.warning("incident #%d %s", incident.id, redact(resolve_text(incident)))


class _RedactingFilter(logging.Filter):
    """slack-sdk logs request URLs (a webhook URL is its secret): scrub every record of its logger."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        return True


def _sdk_logger(name: str, secret: str) -> logging.Logger:
    logger = logging.getLogger(f"{__name__}.sdk.{name}")
    logger.setLevel(logging.INFO)  # slack-sdk dumps bodies and URLs when its logger is at DEBUG
    for old in [f for f in logger.filters if isinstance(f, _RedactingFilter)]:
        logger.removeFilter(old)
    logger.addFilter(_RedactingFilter([secret]))
    return logger


def _secret_value(secret: SecretStr | str) -> str:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def _rate_limit_handler(max_retries: int, max_wait: int) -> Any:
    """slack-sdk's RateLimitErrorRetryHandler (sleeps Retry-After, then retries), refusing waits over max_wait."""
    from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

    class BoundedRateLimitErrorRetryHandler(RateLimitErrorRetryHandler):
        def _can_retry(self, *, state: Any, request: Any, response: Any = None, error: Any = None) -> bool:
            if response is None or response.status_code != 429:
                return False
            values = {k.lower(): v for k, v in response.headers.items()}.get("retry-after") or ["1"]
            try:
                return int(values[0]) <= max_wait
            except ValueError:
                return False

    return BoundedRateLimitErrorRetryHandler(max_retry_count=max_retries)


class SlackNotifier:
    """Posts incidents to a channel with a bot token (chat.postMessage); updates and resolves go in its thread."""

    def __init__(
        self,
        token: SecretStr | str,
        channel: str,
        *,
        base_url: str | None = None,
        timeout: int = DEFAULT_TIMEOUT_SECONDS,
        max_rate_limit_retries: int = 1,
        max_rate_limit_wait: int = MAX_RATE_LIMIT_WAIT_SECONDS,
    ) -> None:
        from slack_sdk import WebClient

        self.channel = channel
        self._secret = _secret_value(token)
        self._client = WebClient(
            token=self._secret,
            base_url=base_url or WebClient.BASE_URL,
            timeout=timeout,
            logger=_sdk_logger("web", self._secret),
            retry_handlers=[_rate_limit_handler(max_rate_limit_retries, max_rate_limit_wait)],
        )

    def __repr__(self) -> str:
        return f"SlackNotifier(channel={self.channel!r})"

    def _call(self, method: str, **kwargs: Any) -> Any:
        from slack_sdk.errors import SlackApiError

        try:
            return self._client.api_call(method, json=kwargs)
        except SlackApiError as error:
            reason = error.response.get("error", error.response.status_code) if error.response else "no response"
            raise AlertDeliveryError(f"Slack {method} failed: {redact(str(reason), [self._secret])}") from None
        except Exception as error:  # urllib errors, timeouts: never chain them (they may carry the request)
            message = redact(f"{type(error).__name__}: {error}", [self._secret])
            raise AlertDeliveryError(f"Slack {method} failed: {message}") from None

    def send(self, incident: IncidentNotice) -> str | None:
        response = self._call(
            "chat.postMessage",
            channel=self.channel,
            text=redact(fallback_text(incident), [self._secret]),
            blocks=_redact_blocks(incident_blocks(incident), self._secret),
            unfurl_links=False,
        )
        return str(response["ts"])

    def update(self, incident: IncidentNotice, ts: str | None) -> None:
        text = redact(update_text(incident), [self._secret])
        if ts is None:  # never posted with a thread (announced by another notifier): post it anew
            self._call("chat.postMessage", channel=self.channel, text=text)
            return
        self._call("chat.postMessage", channel=self.channel, text=text, thread_ts=ts)

    def resolve(self, incident: IncidentNotice, ts: str | None) -> None:
        text = redact(resolve_text(incident), [self._secret])
        if ts is None:
            self._call("chat.postMessage", channel=self.channel, text=text)
            return
        self._call("chat.postMessage", channel=self.channel, text=text, thread_ts=ts)
        title = f"[{incident.account}] RESOLVED: {incident.title}"
        header = {"type": "header", "text": {"type": "plain_text", "text": _clip(title, 150)}}
        try:  # the root message shows it is over; the thread reply above is what matters
            self._call("chat.update", channel=self.channel, ts=ts, text=text, blocks=[header])
        except AlertDeliveryError as error:
            log.warning(
                "incident #%d of account %s: could not mark the Slack message resolved: %s",
                incident.id,
                incident.account,
                error,
            )


def _redact_blocks(blocks: list[dict[str, Any]], secret: str) -> list[dict[str, Any]]:
    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, [secret])
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(blocks)  # type: ignore[no-any-return]


class WebhookNotifier:
    """Posts incidents to a Slack incoming webhook.

    An incoming webhook cannot read back a message id, so there are no threads: an update or a resolve is a new
    message in the channel, prefixed "[account] update:" or "[account] resolved:".
    """

    def __init__(self, url: SecretStr | str, *, timeout: int = DEFAULT_TIMEOUT_SECONDS) -> None:
        from slack_sdk.webhook import WebhookClient

        self._secret = _secret_value(url)
        self._client = WebhookClient(
            self._secret,
            timeout=timeout,
            logger=_sdk_logger("webhook", self._secret),
            retry_handlers=[_rate_limit_handler(1, MAX_RATE_LIMIT_WAIT_SECONDS)],
        )

    def __repr__(self) -> str:
        return "WebhookNotifier(url=[redacted])"

    def _post(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        try:
            response = self._client.send(text=redact(text, [self._secret]), blocks=blocks, unfurl_links=False)
        except Exception as error:
            message = redact(f"{type(error).__name__}: {error}", [self._secret])
            raise AlertDeliveryError(f"Slack webhook failed: {message}") from None
        if response.status_code != 200:
            body = redact(str(response.body)[:200], [self._secret])
            raise AlertDeliveryError(f"Slack webhook answered {response.status_code}: {body}")

    def send(self, incident: IncidentNotice) -> str | None:
        self._post(fallback_text(incident), _redact_blocks(incident_blocks(incident), self._secret))
        return None

    def update(self, incident: IncidentNotice, ts: str | None) -> None:
        self._post(update_text(incident))

    def resolve(self, incident: IncidentNotice, ts: str | None) -> None:
        self._post(resolve_text(incident))


# --- choosing one ---------------------------------------------------------------------------------------------------


def notifier_from_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> Notifier:
    """Slack bot (token + channel) > incoming webhook > log, from the settings' secrets (the environment; in a flow
    also the Prefect Secret blocks, filled in by prefect_adapter.secrets)."""
    environ = os.environ if environ is None else environ
    if settings.slack_channel:
        token = settings.slack_bot_token
        if token is not None:
            return SlackNotifier(token, settings.slack_channel, base_url=environ.get(SLACK_API_URL_ENV) or None)
    elif settings.slack_bot_token:
        log.warning("SLACK_BOT_TOKEN is set but SLACK_CHANNEL is not: the bot cannot post; set SLACK_CHANNEL")
    webhook = settings.slack_webhook_url
    if webhook is not None:
        return WebhookNotifier(webhook)
    return LogNotifier()
