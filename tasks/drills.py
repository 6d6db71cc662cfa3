"""Tasks of the failover-drill flow: run one scenario, and open or resolve its incident.

A drill is not retried by Prefect: each attempt would be a new namespace and a new outage, and a drill that could
not run (a service it needs is down) should say so in the run, not hide behind a retry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task

from tasks.policies import DRILL, DRILL_ALERT
from trader.alerts.incidents import open_incident_desk
from trader.drills.base import DrillResult
from trader.drills.report import report_incident
from trader.drills.runner import run_drill
from trader.settings import Settings


@task(name="run-failover-drill", tags=["drill", "state"], **DRILL.options())
def run_failover_drill(
    settings: Settings,
    scenario: str,
    keys: int,
    options: dict[str, Any] | None,
    progress: Callable[[float, str], None],
) -> DrillResult:
    """Inject the scenario's fault on a drill namespace of its own and measure the automatic recovery."""
    return run_drill(settings, scenario, keys=keys, progress=progress, options=options)


@task(name="report-drill-incident", tags=["drill", "alerts"], **DRILL_ALERT.options())
def report_drill_incident(settings: Settings, result: DrillResult, flow_run_url: str | None) -> int | None:
    """Open (or refresh) incident drill:<scenario> for a failed drill; resolve it when the drill passed."""
    # migrates (as the desk always did here): the flow does not touch the ledger before its drills ran
    with open_incident_desk(settings) as desk:
        return report_incident(desk, result, flow_run_url)
