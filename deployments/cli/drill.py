"""`perps-bot drill <scenario>`: the failover-drill flow's scenarios from the command line, no Prefect server needed.

Shows a progress bar per scenario, prints the measured table beside the expectations and the runbook's figures,
opens or resolves the incident drill:<scenario> like the flow does, and ends with "Match: True" or "Match: False".
Exit codes: 0 every drill passed, 1 a drill missed an expectation, found a mismatch or could not run, 2 bad input
(unknown scenario, keys < 1, a namespace refused as the live one, a scenario that does not apply here).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from prefect_adapter.secrets import with_secret_blocks
from trader.alerts.incidents import open_incident_desk
from trader.drills.namespace import DrillError, DrillRefused, DrillUnavailable
from trader.drills.report import DrillRun, report_incident, table_rows
from trader.drills.runner import run_drill, scenario_names
from trader.settings import Settings

EXIT_PASSED, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
COLUMNS = ("scenario", "metric", "measured", "expected", "runbook", "status")

log = logging.getLogger(__name__)


def drill_command(
    settings: Settings,
    scenario: str,
    keys: int = 1000,
    *,
    options: dict[str, Any] | None = None,
    console: Console | None = None,
) -> int:
    """Run one scenario (or "all") and print the measured table; the exit code as the module docstring says."""
    out = console or Console(highlight=False, width=160)
    try:
        names = scenario_names(scenario)
    except DrillError as error:
        out.print(f"perps-bot drill: error: {error}", markup=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    if keys < 1:
        out.print(f"perps-bot drill: error: --keys must be at least 1 (got {keys})", markup=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    run = DrillRun()
    columns = (TextColumn("{task.fields[scenario]:<20}"), BarColumn(), TextColumn("{task.description}"))
    with Progress(*columns, TimeElapsedColumn(), console=out, transient=False) as bar:
        for name in names:
            task = bar.add_task("starting", total=1.0, scenario=name)

            def step(fraction: float, message: str, task: Any = task) -> None:
                bar.update(task, completed=fraction, description=message)

            try:
                result = run_drill(settings, name, keys=keys, progress=step, options=options)
            except DrillRefused as error:
                bar.stop()
                out.print(f"perps-bot drill: error: {error}", markup=False, soft_wrap=True)
                return EXIT_BAD_INPUT
            except DrillUnavailable as error:
                if scenario != "all":
                    bar.stop()
                    out.print(f"perps-bot drill: error: {error}", markup=False, soft_wrap=True)
                    return EXIT_BAD_INPUT
                run.skipped[name] = str(error)
                bar.update(task, completed=1.0, description="skipped: does not apply")
                continue
            except Exception as error:  # the drill could not run: reported, the other scenarios still run
                run.errors[name] = f"{type(error).__name__}: {error}"
                bar.update(task, description="could not run")
                continue
            run.results.append(result)
            bar.update(task, completed=1.0, description="passed" if result.passed else "FAILED")
    _print_table(out, run)
    _report_incidents(settings, run, out)
    out.print(f"Match: {run.match}", markup=False, soft_wrap=True)
    return EXIT_PASSED if run.passed else EXIT_FAILED


def _print_table(out: Console, run: DrillRun) -> None:
    table = Table(title="Failover drill: measured against expected")
    for column in COLUMNS:
        table.add_column(column, justify="right" if column == "measured" else "left")
    for row in table_rows(run):
        table.add_row(*(row[column] for column in COLUMNS), style=None if row["status"] == "ok" else "red")
    out.print(table)
    for result in run.results:
        for note in result.notes:
            out.print(f"{result.scenario}: {note}", markup=False, soft_wrap=True)
        for miss in result.misses():
            out.print(f"{result.scenario}: MISS {miss}", markup=False, soft_wrap=True)
    for name, why in run.errors.items():
        out.print(f"{name}: could not run: {why}", markup=False, soft_wrap=True)


def _report_incidents(settings: Settings, run: DrillRun, out: Console) -> None:
    """The same incidents the flow opens: drill:<scenario>, opened on a miss, resolved on a pass."""
    if not run.results:
        return
    with ExitStack() as stack:
        try:
            desk = stack.enter_context(open_incident_desk(with_secret_blocks(settings)))
        except Exception as error:  # the drill's verdict stands without the incident desk
            out.print(f"incidents not recorded: {error}", markup=False, soft_wrap=True)
            return
        for result in run.results:
            incident = report_incident(desk, result)
            if incident is not None:
                opened = f"{result.scenario}: incident #{incident} opened (drill:{result.scenario})"
                out.print(opened, markup=False, soft_wrap=True)
