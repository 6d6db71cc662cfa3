"""How drill results are shown and acted on: one table row per scenario x metric (measured, expected, the runbook's
figure), a markdown report, and the incident a failed drill opens (fingerprint drill:<scenario>)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trader.alerts import IncidentDesk, IncidentKind
from trader.drills.base import DrillResult

log = logging.getLogger(__name__)

RUNBOOK_SECTION = 'operations runbook, "State Recovery & Failover Procedures"'

# The runbook's own words for each expectation, shown beside the measurement.
RUNBOOK_TIMINGS: dict[tuple[str, str], str] = {
    ("*", "detection"): "1-2 s (connection timeout)",
    ("redis-outage", "recovery"): "~8-20 ms for 350-1000 keys",
    ("redis-outage", "total downtime"): "1-2 s once Redis is back",
    ("engine-crash", "detection"): "immediate (crash/exception)",
    ("engine-crash", "recovery"): "cancel 80-200 orders ~30-45 ms; total < 100 ms",
    ("postgres-outage", "recovery"): "~50 ms",
    ("s3-outage", "recovery"): "no figure: queued objects synced when S3 answers",
    ("*", "coherence"): 'failover drill shows "Match: True"',
    ("*", "data_loss_estimate"): "from checkpoint age; none expected",
}


_TIMED = {"detection": "detection_ms", "recovery": "recovery_ms", "total downtime": "downtime_ms"}


def missed(result: DrillResult, metric: str) -> bool:
    """True when this row of result.rows() is one of its misses."""
    if metric in _TIMED:
        name = _TIMED[metric]
        value = getattr(result, name)
        return name in result.expected and (value is None or value > result.expected[name])
    if metric == "coherence":
        return result.coherence_match is False
    if metric == "keys recovered":
        keys_expected = getattr(result, "keys_expected", None)
        return keys_expected is not None and result.keys_recovered != keys_expected
    if metric == "data_loss_estimate":
        return bool(getattr(result, "writes_lost", 0))
    return False


def runbook_figure(scenario: str, metric: str) -> str:
    return RUNBOOK_TIMINGS.get((scenario, metric)) or RUNBOOK_TIMINGS.get(("*", metric)) or "-"


@dataclass
class DrillRun:
    """Everything one failover-drill run produced: results, scenarios that did not apply, and those that failed."""

    results: list[DrillResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # scenario -> why it does not apply
    errors: dict[str, str] = field(default_factory=dict)  # scenario -> why it could not run

    @property
    def passed(self) -> bool:
        return not self.errors and all(result.passed for result in self.results)

    @property
    def match(self) -> bool:
        return all(result.coherence_match is not False for result in self.results) and not self.errors


def table_rows(run: DrillRun) -> list[dict[str, str]]:
    """One row per scenario x metric: measured vs expected, the runbook's figure, ok or MISS."""
    rows: list[dict[str, str]] = []
    for result in run.results:
        for row in result.rows():
            metric = row["metric"]
            rows.append(
                {
                    "scenario": result.scenario,
                    "metric": metric,
                    "measured": row["measured"],
                    "expected": row["expected"],
                    "runbook": runbook_figure(result.scenario, metric),
                    "status": "MISS" if missed(result, metric) else "ok",
                }
            )
    for name, why in run.skipped.items():
        rows.append(
            {"scenario": name, "metric": "-", "measured": "skipped", "expected": "-", "runbook": "-", "status": why}
        )
    for name, why in run.errors.items():
        rows.append(
            {"scenario": name, "metric": "-", "measured": "did not run", "expected": "-", "runbook": "-", "status": why}
        )
    return rows


def markdown_report(run: DrillRun) -> str:
    """The report artifact: the verdict, then each scenario's table beside the runbook's expected timings."""
    verdict = "passed" if run.passed else "FAILED"
    lines = [
        f"# Failover drill {verdict}",
        "",
        f"Expected timings from the {RUNBOOK_SECTION}: detection 1-2 s, Redis recovery ~8-20 ms for 350-1000 keys, "
        "engine recovery under 100 ms, PostgreSQL ~50 ms.",
        "",
    ]
    for result in run.results:
        status = "passed" if result.passed else "FAILED: " + "; ".join(result.misses())
        lines += [
            f"## {result.scenario}: {status}",
            "",
            f"namespace `{result.namespace}`, started {result.started_at.isoformat(timespec='seconds')}",
            "",
            "| metric | measured | expected | runbook |",
            "|---|---:|---|---|",
        ]
        for row in result.rows():
            figure = runbook_figure(result.scenario, row["metric"])
            lines.append(f"| {row['metric']} | {row['measured']} | {row['expected']} | {figure} |")
        lines.append("")
        if result.notes:
            lines += [f"- {note}" for note in result.notes] + [""]
        lines += [f"Match: {result.coherence_match is not False}", ""]
    for name, why in run.skipped.items():
        lines += [f"## {name}: skipped", "", why, ""]
    for name, why in run.errors.items():
        lines += [f"## {name}: could not run", "", why, ""]
    return "\n".join(lines)


def incident_fingerprint(scenario: str) -> str:
    return f"drill:{scenario}"


def report_incident(desk: IncidentDesk, result: DrillResult, flow_run_url: str | None = None) -> int | None:
    """Open (or refresh) the drill's incident when it missed an expectation or found a mismatch; resolve it when it
    passed. Returns the incident id opened, None otherwise."""
    fingerprint = incident_fingerprint(result.scenario)
    if result.passed:
        if desk.resolve(fingerprint):
            log.info("Failover drill %s passed: incident %s resolved", result.scenario, fingerprint)
        return None
    misses = result.misses()
    evidence = "\n".join(
        [f"namespace {result.namespace}", *misses, *(f"{r['metric']}: {r['measured']}" for r in result.rows())]
    )
    return desk.raise_incident(
        IncidentKind.DRILL_FAILED,
        f"failover drill {result.scenario} failed: {misses[0] if misses else 'see evidence'}",
        evidence,
        fingerprint=fingerprint,
        flow_run_url=flow_run_url,
    )
