"""The runbook's severity matrix as data: incident kinds, their SEV level and the runbook's first actions.

Source: ../shared/runbooks/operations-runbook-gpt-trader.md, "Incident Response / Severity Matrix"
(the same table is in runbook-spot-profiles.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Severity = Literal["SEV-1", "SEV-2", "SEV-3"]


@dataclass(frozen=True)
class SeverityLevel:
    """One row of the runbook's severity matrix."""

    severity: Severity
    criteria: str
    first_actions: tuple[str, ...]


SEVERITY_MATRIX: dict[Severity, SeverityLevel] = {
    "SEV-1": SeverityLevel(
        "SEV-1",
        "Bot offline, or guard-triggered halt with open exposure",
        ("Halt trading if not already stopped", "contact on-call", "collect logs", "confirm balances"),
    ),
    "SEV-2": SeverityLevel(
        "SEV-2",
        "Partial functionality loss (e.g., account telemetry stalled)",
        ("Investigate recent deploys", "restart affected service", "monitor recovery"),
    ),
    "SEV-3": SeverityLevel(
        "SEV-3",
        "Degraded performance without financial impact",
        ("Create ticket", "plan fix", "monitor"),
    ),
}


class IncidentKind(StrEnum):
    """What went wrong, in the runbook's words; each kind maps to one row of the matrix."""

    BOT_OFFLINE = "bot_offline"
    GUARD_HALT_WITH_EXPOSURE = "guard_halt_with_exposure"
    PARTIAL_FUNCTIONALITY_LOSS = "partial_functionality_loss"
    TELEMETRY_STALLED = "telemetry_stalled"
    FLOW_FAILED = "flow_failed"
    FLOW_CRASHED = "flow_crashed"
    DEGRADED_PERFORMANCE = "degraded_performance"
    GUARD_WARNING = "guard_warning"
    GUARD_CRITICAL = "guard_critical"
    GUARD_PAGE = "guard_page"
    UNAUTHORIZED_ACTIVITY = "unauthorized_activity"
    KEY_ROTATION = "key_rotation"
    EMERGENCY_PROCEDURE = "emergency_procedure"
    DATA_QUALITY = "data_quality"
    DRILL_FAILED = "drill_failed"
    SHUTDOWN_FAILED = "shutdown_failed"


KIND_SEVERITY: dict[IncidentKind, Severity] = {
    IncidentKind.BOT_OFFLINE: "SEV-1",
    IncidentKind.GUARD_HALT_WITH_EXPOSURE: "SEV-1",
    IncidentKind.PARTIAL_FUNCTIONALITY_LOSS: "SEV-2",
    IncidentKind.TELEMETRY_STALLED: "SEV-2",
    # An operations flow (checklist, reconcile, checkpoint) that stops working is a partial loss;
    # the trading-bot flow failing or crashing is BOT_OFFLINE instead (see flows/hooks.py).
    IncidentKind.FLOW_FAILED: "SEV-2",
    IncidentKind.FLOW_CRASHED: "SEV-2",
    IncidentKind.DEGRADED_PERFORMANCE: "SEV-3",
    # A guard at its warning level is degraded performance; at critical it forces an action (reduce-only,
    # halt, restart the feed), which is SEV-1 when it halts with exposure open (GUARD_HALT_WITH_EXPOSURE).
    IncidentKind.GUARD_WARNING: "SEV-3",
    IncidentKind.GUARD_CRITICAL: "SEV-2",
    # A guard whose critical pages whatever the exposure: runaway trading, a massive drawdown within the hour
    # (the AI-bot runbook's emergency scenarios 2 and 3: stop at once).
    IncidentKind.GUARD_PAGE: "SEV-1",
    # Orders on the exchange this platform did not place (perps-bot keys audit): a possibly compromised key.
    IncidentKind.UNAUTHORIZED_ACTIVITY: "SEV-1",
    # The account's bots switched to the other API key (perps-bot keys rotate): the key-compromise procedure.
    IncidentKind.KEY_ROTATION: "SEV-1",
    # Kill switch, reduce-only, cancel-all, flatten: an operator stopped trading by hand.
    IncidentKind.EMERGENCY_PROCEDURE: "SEV-1",
    # Market data or reconciliation inputs failed their Great Expectations suite.
    IncidentKind.DATA_QUALITY: "SEV-2",
    # A failover drill missed the runbook's timings or found the cache incoherent: a recovery path is degraded.
    IncidentKind.DRILL_FAILED: "SEV-2",
    # A graceful shutdown stopped at a failed step (positions not flat in time, orders left, the bot not stopped):
    # the account is half shut down, the operator finishes by hand.
    IncidentKind.SHUTDOWN_FAILED: "SEV-2",
}


def severity_for(kind: IncidentKind | str) -> Severity:
    """The runbook's severity for this kind of incident."""
    return KIND_SEVERITY[IncidentKind(kind)]


def first_actions(severity: Severity | str) -> tuple[str, ...]:
    """The runbook's first actions for this severity, in its words."""
    return SEVERITY_MATRIX[severity].first_actions  # type: ignore[index]
