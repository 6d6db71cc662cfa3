"""failover-drill: the runbook's "State Recovery & Failover Procedures" rehearsed for real, weekly and on demand.

For each scenario (redis-outage, engine-crash, postgres-outage, s3-outage, exchange-degradation; "all" runs every
registered one in that order): a drill namespace of its own seeded from the latest checkpoint, the fault injected,
the automatic recovery measured. Artifacts: progress while it works, a table (key failover-drill) with one row per
scenario x metric (measured, expected, the runbook's figure) and a markdown report (key failover-drill-report).
A drill that misses an expectation or finds a mismatch opens incident drill:<scenario> (a passing one resolves it);
the run itself fails only when a drill could not run (then the flow's own incident hook fires). With declared
accounts, each account's drills run in turn (flows/accounts.py), seeded from that account's checkpoint.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from flows.accounts import for_each_account
from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.artifacts import ProgressArtifact, account_key, publish_markdown, publish_table
from prefect_adapter.runs import current_flow_run_id, flow_run_url
from tasks.drills import report_drill_incident, run_failover_drill
from trader.drills.namespace import DrillError, DrillUnavailable
from trader.drills.report import DrillRun, markdown_report, table_rows
from trader.drills.runner import scenario_names
from trader.settings import Settings


@flow(name="failover-drill", log_prints=False, persist_result=False, timeout_seconds=3600, **RUNBOOK_HOOKS)
def failover_drill(
    scenario: str = "all",
    keys: int = 1000,
    profile: str = "dev",
    options: dict[str, Any] | None = None,
    account: str | None = None,
) -> dict[str, Any] | State:
    """Run the failover drill(s) for each account (unset or "all": every declared account; a name: that one) and
    publish measured against expected; incidents for the drills that failed.

    options (advanced): fault ("proxy", "blackhole", "stop"), outage_seconds, s3_retry_interval.
    """
    names = scenario_names(scenario)
    return for_each_account(
        "failover-drill",
        account,
        profile,
        lambda settings: drill_account(settings, scenario, names, keys, options),
        figures=lambda result: {"status": "passed" if result["passed"] else "FAILED", "match": result["match"]},
        migrate=False,
        # One account at a time: each drill injects a real outage, and two at once would measure each other's.
        max_concurrency=1,
    )


def drill_account(
    settings: Settings, scenario: str, names: list[str], keys: int, options: dict[str, Any] | None
) -> dict[str, Any]:
    """Every scenario in turn on this account's drill namespace; the table and report artifacts of the account."""
    logger = get_run_logger()
    url = flow_run_url(current_flow_run_id())
    title = f"failover drill of {settings.account}: {', '.join(names)}"
    progress = ProgressArtifact(account_key("failover-drill-progress", settings.account), title, min_step=2.0)
    progress.set(1.0, title, force=True)
    run = DrillRun()
    for index, name in enumerate(names):

        def step(fraction: float, message: str, index: int = index) -> None:
            progress.set(100.0 * (index + fraction) / len(names), message)

        try:
            result = run_failover_drill(settings, name, keys, options, step)
        except DrillUnavailable as error:
            if scenario == "all":
                run.skipped[name] = str(error)
                logger.warning("Failover drill %s skipped: %s", name, error)
            else:
                run.errors[name] = str(error)
            continue
        except Exception as error:
            run.errors[name] = f"{type(error).__name__}: {error}"
            logger.error("Failover drill %s could not run: %s", name, run.errors[name])
            continue
        run.results.append(result)
        report_drill_incident(settings, result, url)
        verdict = "passed" if result.passed else "FAILED: " + "; ".join(result.misses())
        logger.info("Failover drill %s %s; Match: %s", name, verdict, result.coherence_match is not False)
    publish_table(
        account_key("failover-drill", settings.account),
        table_rows(run),
        description=f"failover drill {'passed' if run.passed else 'FAILED'}: measured against expected",
    )
    publish_markdown(
        account_key("failover-drill-report", settings.account), markdown_report(run), description="failover drill"
    )
    progress.finish(f"failover drill {'passed' if run.passed else 'FAILED'}; Match: {run.match}")
    if run.errors:
        raise DrillError(
            "failover drill could not run: " + "; ".join(f"{name}: {why}" for name, why in run.errors.items())
        )
    return {
        "passed": run.passed,
        "match": run.match,
        "scenarios": {result.scenario: result.passed for result in run.results},
        "skipped": sorted(run.skipped),
    }
