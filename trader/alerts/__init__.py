"""Alerts: the runbook's severity matrix, incidents in the ledger, and notifiers (log, Slack bot, Slack webhook)."""

from __future__ import annotations

from trader.alerts.incidents import IncidentDesk
from trader.alerts.notifier import (
    AlertDeliveryError,
    AlertError,
    IncidentNotice,
    LogNotifier,
    Notifier,
    SlackNotifier,
    WebhookNotifier,
    notifier_from_settings,
    redact,
)
from trader.alerts.severity import SEVERITY_MATRIX, IncidentKind, SeverityLevel, first_actions, severity_for

__all__ = [
    "SEVERITY_MATRIX",
    "AlertDeliveryError",
    "AlertError",
    "IncidentDesk",
    "IncidentKind",
    "IncidentNotice",
    "LogNotifier",
    "Notifier",
    "SeverityLevel",
    "SlackNotifier",
    "WebhookNotifier",
    "first_actions",
    "notifier_from_settings",
    "redact",
    "severity_for",
]
