"""The runbook's morning checklist through the real CLI: `prefect deployment run 'daily-checklist/daily'`
against a real Prefect server, served by deployments.serve_all."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

from trader.ledger import Ledger

PREFECT = Path(sys.executable).parent / "prefect"
ITEMS = {
    "preflight",
    "telemetry freshness",
    "overnight PnL and positions",
    "ERROR/CRITICAL scan",
    "heartbeat metrics",
    "risk guard counters",
    "market data quality",
    "disk space",
    "database size and connectivity",
    "backup age",
    "funding schedule",
}


def run_deployment(env: dict[str, str], name: str) -> tuple[str, float]:
    """`prefect deployment run NAME --watch`; returns (flow run id, seconds from the command to COMPLETED)."""
    started = time.monotonic()
    result = subprocess.run(
        [str(PREFECT), "deployment", "run", name, "--watch", "--watch-interval", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED" in result.stdout.upper(), result.stdout
    run_id = next(line.split("UUID:")[1].strip() for line in result.stdout.splitlines() if "UUID:" in line)
    return run_id, elapsed


def test_daily_checklist_runs_from_the_cli_and_publishes_its_artifacts(served_deployments: dict[str, str]) -> None:
    env = served_deployments
    # The bot's log has one ERROR line for the scan to find.
    log_dir = Path(env["LOG_DIR"])
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    (log_dir / "perps_bot.log").write_text(f"{stamp},000 ERROR trader.bot order rejected: test entry\n")

    timings, server_side, phases = [], [], []
    with get_client(sync_client=True) as client:
        for _ in range(3):
            run_id, seconds = run_deployment(env, "daily-checklist/daily")
            timings.append(seconds)
            done = client.read_flow_run(run_id)
            assert done.created and done.start_time and done.end_time
            server_side.append((done.end_time - done.created).total_seconds())
            phases.append(
                (
                    round((done.start_time - done.created).total_seconds(), 2),
                    round(done.total_run_time.total_seconds(), 2),
                )
            )
        run = client.read_flow_run(run_id)
        assert run.state is not None and run.state.is_completed()
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["daily-checklist", "daily-checklist-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
        )
    by_key = {a.key: a for a in artifacts}
    table = by_key["daily-checklist"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {r["item"] for r in rows} == ITEMS
    assert all(r["status"] in ("PASS", "WARN", "FAIL") and r["evidence"] for r in rows)
    assert "# Morning checklist" in str(by_key["daily-checklist-summary"].data)
    ledger = Ledger(env["DATABASE_URL"])
    runs = ledger.checklist_runs("daily")
    assert len(runs) >= 3 and runs[0].flow_run_id == run_id
    results = {r["item"]: r for r in json.loads(runs[0].results_json)}
    assert results["database size and connectivity"]["status"] == "pass"
    print(
        f"daily-checklist: created -> COMPLETED median {statistics.median(server_side):.2f} s {server_side}; "
        f"(created->running, run time) {phases}; CLI command wall time median {statistics.median(timings):.1f} s"
    )
