"""The Prefect automations that supervise the bot, and the one that tells Slack when any flow run crashes.

    python -m deployments.automations        # against PREFECT_API_URL; safe to run again (idempotent, by name)

Always created (`perps-bot up` runs this module too):
  * "gpt-trader: crash zombie bot runs": Prefect's documented zombie automation ("Detect zombie flows"), narrowed to
    trading-bot runs: a proactive trigger that expects, for each flow run, another heartbeat (or a final state)
    within ZOMBIE_AFTER_SECONDS of its last `prefect.flow-run.heartbeat`; if none comes, ChangeFlowRunState ->
    Crashed. The bot runs with PREFECT_FLOWS_HEARTBEAT_FREQUENCY=BOT_HEARTBEAT_SECONDS (serve_all.py, prefect.yaml),
    so a run whose machine died is Crashed once a heartbeat is half an interval late (a false alarm costs a
    restart run that stands down on the live bot's lease, which sets its run back to Running: docs/supervision.md);
    not Prefect's example of three missed, so a lost machine's bots trade elsewhere within 90 s
    (tests/deployments/test_workers_failover.py). Only trading-bot runs: other flows keep Prefect's default 180 s
    heartbeat on workers, which this window would crash.
  * "gpt-trader: restart crashed bot runs": on `prefect.flow-run.Crashed` of a trading-bot run, RunDeployment with
    source "inferred" (the crashed run's own deployment) and the crashed run's parameters (a server-side Jinja
    template) plus restart_of=<crashed run id>. The new run applies the restart policy before it trades
    (trader/supervision.py: backoff, RESTART_MAX_PER_HOUR, never after an operator's cancel, SEV-1 thread).

With Slack configured, also: "gpt-trader: notify on crashed runs".
Trigger: the event `prefect.flow-run.Crashed` on any flow run (reactive, threshold 1).
Action: `CallWebhook` on a Prefect `Webhook` block named `gpt-trader-slack-crash-alert` (no Prefect Cloud needed),
which posts a plain-text message with the run's severity (trading-bot: SEV-1, any other flow: SEV-2), the state
message, the runbook's first actions and the run's UI link (its id when the server has no UI URL):
  * with SLACK_BOT_TOKEN + SLACK_CHANNEL: `chat.postMessage` with the token in the block's (secret) headers;
  * else with SLACK_WEBHOOK_URL: the incoming webhook.
The secrets come from the environment or the Prefect Secret blocks `slack-bot-token` / `slack-webhook-url`; they
live only in the Webhook block (stored as secret fields), never in the automation or this command's output.
Without any Slack setting nothing is created.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any
from uuid import UUID

from prefect_adapter.orchestrator import HEARTBEAT_EVENT, HEARTBEAT_SECONDS
from prefect_adapter.secrets import with_secret_blocks
from trader.alerts.notifier import SLACK_API_URL_ENV, redact
from trader.alerts.severity import SEVERITY_MATRIX, IncidentKind, severity_for
from trader.settings import Settings, load_settings

log = logging.getLogger(__name__)

AUTOMATION_NAME = "gpt-trader: notify on crashed runs"
WEBHOOK_BLOCK_NAME = "gpt-trader-slack-crash-alert"
CRASHED_EVENT = "prefect.flow-run.Crashed"
SLACK_API = "https://slack.com/api/"

BOT_FLOW = "trading-bot"
# Prefect refuses a heartbeat frequency below 30 s; a heartbeat half an interval late makes a zombie. The bot also
# sends the same event every 5 s from its orchestrator poller (prefect_adapter/orchestrator.py), so a live bot
# outlasts a Prefect server outage of up to 40 s (heartbeats sent while the server is down are lost).
BOT_HEARTBEAT_SECONDS = 30
ZOMBIE_AFTER_SECONDS = BOT_HEARTBEAT_SECONDS + BOT_HEARTBEAT_SECONDS // 2
ZOMBIE_AUTOMATION_NAME = "gpt-trader: crash zombie bot runs"
RESTART_AUTOMATION_NAME = "gpt-trader: restart crashed bot runs"
# The crashed run's parameters as they were, plus restart_of and the Crashed event's id: rendered by the server when
# the automation fires. Prefect delivers an event at least once, so one Crashed event can start two runs; the event
# id lets the restart policy keep the first and stand the copy down (tasks/supervision.py).
RESTART_PARAMETERS_TEMPLATE = (
    "{{ dict(flow_run.parameters, restart_of=(flow_run.id | string), restart_event=(event.id | string)) | tojson }}"
)


def _message_template() -> str:
    """Jinja (rendered by the Prefect server) for the message text: severity and first actions per the matrix."""
    bot = SEVERITY_MATRIX[severity_for(IncidentKind.BOT_OFFLINE)]
    other = SEVERITY_MATRIX[severity_for(IncidentKind.FLOW_CRASHED)]

    def line(level: Any, everyone: str) -> str:
        # The account leads like the incident desk's own messages ("[alpha] SEV-1 ..."): the run's `account`
        # parameter, else the bot's single account or, for a runbook flow, every declared account.
        return (
            f"[' ~ (flow_run.parameters.account or '{everyone}') ~ '] "
            f"{level.severity} flow run crashed: ' ~ flow.name ~ '/' ~ flow_run.name ~ ' - ' ~ "
            f"(flow_run.state.message or 'no state message') ~ '. First actions: {'; '.join(level.first_actions)}. "
            f"Flow run: ' ~ ((flow_run|ui_url) or ('id ' ~ flow_run.id))"
        )

    return (
        f"{{% if flow.name == 'trading-bot' %}}{{{{ ('{line(bot, 'default')}) | tojson }}}}"
        f"{{% else %}}{{{{ ('{line(other, 'all accounts')}) | tojson }}}}{{% endif %}}"
    )


def _webhook_target(settings: Settings, slack_api_url: str) -> tuple[str, dict[str, str], str] | None:
    """URL, headers and payload template for the Webhook block; None when no Slack is configured."""
    text = _message_template()
    settings = with_secret_blocks(settings)  # the notifier's choice: bot token + channel > webhook
    token, webhook = settings.slack_bot_token, settings.slack_webhook_url
    if settings.slack_channel and token is not None:
        headers = {
            "Authorization": f"Bearer {token.get_secret_value()}",
            "Content-Type": "application/json; charset=utf-8",
        }
        payload = f'{{"channel": {json.dumps(settings.slack_channel)}, "text": {text}}}'
        return f"{slack_api_url.rstrip('/')}/chat.postMessage", headers, payload
    if webhook is not None:
        return webhook.get_secret_value(), {"Content-Type": "application/json"}, f'{{"text": {text}}}'
    return None


def ensure_crash_automation(settings: Settings | None = None, *, slack_api_url: str | None = None) -> UUID | None:
    """Create or refresh the crash automation and its Webhook block; its id, or None when Slack is not configured."""
    import os

    from prefect.automations import Automation, CallWebhook, EventTrigger, Posture
    from prefect.blocks.webhook import Webhook
    from prefect.types import SecretDict

    settings = settings or load_settings()
    api = slack_api_url or os.environ.get(SLACK_API_URL_ENV) or SLACK_API
    target = _webhook_target(settings, api)
    if target is None:
        log.warning("no SLACK_BOT_TOKEN + SLACK_CHANNEL or SLACK_WEBHOOK_URL: the crash automation was not created")
        return None
    url, headers, payload = target
    block = Webhook(method="POST", url=url, headers=SecretDict(headers))  # type: ignore[arg-type]
    block_id: UUID = block.save(WEBHOOK_BLOCK_NAME, overwrite=True, _sync=True)  # type: ignore[call-arg,assignment]
    wanted = Automation(
        name=AUTOMATION_NAME,
        description="Slack message for every crashed flow run (deployments/automations.py)",
        trigger=EventTrigger(
            expect={CRASHED_EVENT},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[CallWebhook(block_document_id=block_id, payload=payload)],
    )
    existing = _find_automation(AUTOMATION_NAME)
    if existing is None:
        return wanted.create(_sync=True).id  # type: ignore[call-arg,union-attr]
    wanted.id = existing
    wanted.update(_sync=True)  # type: ignore[call-arg]
    return existing


def _bot_runs(flow: str = BOT_FLOW) -> dict[str, str]:
    """Related-resource filter: events of runs of the trading-bot flow (any deployment, any account)."""
    return {"prefect.resource.role": "flow", "prefect.resource.name": flow}


def zombie_automation(
    *, flow: str = BOT_FLOW, within: float = ZOMBIE_AFTER_SECONDS, name: str = ZOMBIE_AUTOMATION_NAME
) -> Any:
    """Prefect's documented zombie automation for trading-bot runs: no heartbeat in ZOMBIE_AFTER_SECONDS -> Crashed.
    (flow, within and name are for tests: a window of seconds on a flow of their own.)"""
    from datetime import timedelta

    from prefect.automations import Automation, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState

    return Automation(
        name=name,
        description=(
            f"{flow} runs send {HEARTBEAT_EVENT} every {BOT_HEARTBEAT_SECONDS} s (the bot's poller every "
            f"{HEARTBEAT_SECONDS:g} s); one that stops for {within:g} s without a final state is marked Crashed "
            "(deployments/automations.py)"
        ),
        trigger=EventTrigger(
            after={HEARTBEAT_EVENT},
            expect={
                HEARTBEAT_EVENT,
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            match_related=_bot_runs(flow),  # type: ignore[arg-type]
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within),
        ),
        actions=[
            ChangeFlowRunState(
                name=None,
                force=False,  # the documented automation: the server's orchestration rules still apply
                state=StateType.CRASHED,
                message=f"no heartbeat for {within:g} s: the bot's process or machine is gone (zombie)",
            )
        ],
    )


def restart_automation() -> Any:
    """A crashed trading-bot run -> a new run of the same deployment with the same parameters and restart_of."""
    from prefect.automations import Automation, EventTrigger, Posture
    from prefect.events.actions import RunDeployment

    return Automation(
        name=RESTART_AUTOMATION_NAME,
        description=(
            "Starts a crashed trading-bot run again (same deployment, same parameters); the new run applies the "
            "restart policy before trading: backoff, RESTART_MAX_PER_HOUR, never after a cancel (trader/supervision.py)"
        ),
        trigger=EventTrigger(
            expect={CRASHED_EVENT},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_bot_runs(),  # type: ignore[arg-type]
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            RunDeployment(
                source="inferred",
                deployment_id=None,
                job_variables=None,
                parameters={
                    "__prefect_kind": "json",
                    "value": {"__prefect_kind": "jinja", "template": RESTART_PARAMETERS_TEMPLATE},
                },
            )
        ],
    )


def ensure_automation(wanted: Any) -> UUID:
    """Create the automation, or update the one with its name (and delete copies): safe to run again."""
    existing = _find_automation(wanted.name)
    if existing is None:
        return wanted.create(_sync=True).id  # type: ignore[no-any-return]
    wanted.id = existing
    wanted.update(_sync=True)
    return existing


def ensure_supervision_automations() -> dict[str, UUID]:
    """The zombie and restart automations (no Slack needed); their ids by name."""
    return {a.name: ensure_automation(a) for a in (zombie_automation(), restart_automation())}


def _find_automation(name: str) -> UUID | None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = [a for a in client.read_automations_by_name(name=name) if a.name == name]
        extra = found[1:]
        for duplicate in extra:  # an older non-idempotent run left copies: keep one
            client.delete_automation(duplicate.id)
    return found[0].id if found else None


def main() -> int:
    """`python -m deployments.automations`: ensure the supervision automations and the crash automation; print ids."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        for name, supervision_id in ensure_supervision_automations().items():
            print(f"automation {name!r} ({supervision_id})")
    except Exception as error:
        print(f"could not create the supervision automations: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    try:
        automation_id = ensure_crash_automation()
    except Exception as error:
        print(f"could not create the crash automation: {redact(f'{type(error).__name__}: {error}')}", file=sys.stderr)
        return 1
    if automation_id is None:
        print("no Slack configured (SLACK_BOT_TOKEN + SLACK_CHANNEL, or SLACK_WEBHOOK_URL): nothing created")
        return 0
    print(f"automation {AUTOMATION_NAME!r} ({automation_id}): {CRASHED_EVENT} -> Webhook block {WEBHOOK_BLOCK_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
