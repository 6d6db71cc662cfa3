from __future__ import annotations

import pytest

from trader.alerts import SEVERITY_MATRIX, IncidentKind, first_actions, severity_for

# The runbook's severity matrix, first-actions column, verbatim (operations-runbook-gpt-trader.md).
RUNBOOK_FIRST_ACTIONS = {
    "SEV-1": "Halt trading if not already stopped, contact on-call, collect logs, confirm balances",
    "SEV-2": "Investigate recent deploys, restart affected service, monitor recovery",
    "SEV-3": "Create ticket, plan fix, monitor",
}


@pytest.mark.parametrize("severity", sorted(RUNBOOK_FIRST_ACTIONS))
def test_first_actions_are_the_runbooks_words(severity: str) -> None:
    assert ", ".join(first_actions(severity)) == RUNBOOK_FIRST_ACTIONS[severity]


def test_bot_offline_and_guard_halt_are_sev1_telemetry_stall_sev2_degradation_sev3() -> None:
    assert severity_for(IncidentKind.BOT_OFFLINE) == "SEV-1"
    assert severity_for("guard_halt_with_exposure") == "SEV-1"
    assert severity_for(IncidentKind.TELEMETRY_STALLED) == "SEV-2"
    assert severity_for(IncidentKind.DEGRADED_PERFORMANCE) == "SEV-3"


def test_every_kind_has_a_row_of_the_matrix() -> None:
    assert {severity_for(kind) for kind in IncidentKind} <= set(SEVERITY_MATRIX)


def test_the_ledger_accepts_exactly_the_alert_severities() -> None:
    from typing import get_args

    from trader.alerts.severity import Severity
    from trader.ledger.models import INCIDENT_SEVERITIES

    assert get_args(Severity) == INCIDENT_SEVERITIES
