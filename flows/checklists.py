"""daily-checklist: the runbook's morning checklist, one task per item, as a Prefect flow.

Each task returns pass, warn or fail with its evidence. The flow publishes a table artifact (one row per item)
and a markdown summary (the market data quality item adds its own table, key "data-quality", one row per
expectation), stores the run in checklist_runs, opens an incident per failed item and resolves the
incidents of items that pass again. A failing item does not fail the flow run: the run completes and says
what failed (the incident is the alert); only a checklist that cannot run at all fails.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows.hooks import RUNBOOK_HOOKS, flow_run_url
from trader.alerts.incidents import IncidentDesk, report_checks
from trader.alerts.notifier import Notifier, notifier_from_settings
from trader.alerts.severity import IncidentKind
from trader.checklists import daily
from trader.checklists.daily import CheckResult, guarded, worst
from trader.ledger import Ledger
from trader.ledger.models import Severity
from trader.runtime import build_broker
from trader.settings import Settings, load_settings
from trader.state.cold import cold_store_from_settings

RETRIES = 3  # every task that touches the network (broker, database, cold tier)
BACKOFF = exponential_backoff(backoff_factor=2)
DATA_QUALITY_ARTIFACT = "data-quality"  # the market data quality item's table: one row per expectation


@task(name="preflight", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def preflight(settings: Settings) -> CheckResult:
    broker = build_broker(settings, read_only=True)
    return guarded("preflight", lambda: daily.preflight(settings, broker))


@task(name="telemetry freshness", cache_policy=NO_CACHE)
def telemetry(settings: Settings, now: datetime) -> CheckResult:
    return guarded(
        "telemetry freshness", lambda: daily.telemetry_freshness(Ledger(settings.database_url, migrate=False), now)
    )


@task(name="overnight PnL and positions", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def pnl(settings: Settings, now: datetime) -> CheckResult:
    broker = build_broker(settings, read_only=True)
    ledger = Ledger(settings.database_url, migrate=False)
    return guarded("overnight PnL and positions", lambda: daily.overnight_pnl_and_positions(ledger, broker, now))


@task(name="ERROR/CRITICAL scan", cache_policy=NO_CACHE)
def log_scan(settings: Settings, since: datetime | None) -> CheckResult:
    return guarded("ERROR/CRITICAL scan", lambda: daily.log_scan(settings.log_file, since))


@task(name="heartbeat metrics", cache_policy=NO_CACHE)
def heartbeat(settings: Settings, now: datetime) -> CheckResult:
    return guarded("heartbeat metrics", lambda: daily.heartbeat_metrics(settings.state_dir / "heartbeat.json", now))


@task(name="risk guard counters", cache_policy=NO_CACHE)
def guards(settings: Settings) -> CheckResult:
    return guarded("risk guard counters", lambda: daily.guard_counters(settings.state_dir / "heartbeat.json"))


@task(name="market data quality", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def market_data_quality(settings: Settings, previous_gate_failed: int | None) -> CheckResult:
    """The market-data suite over 24 h of candles and the bot's gate counters; publishes the data-quality table."""

    def check() -> CheckResult:
        quality = daily.market_data_quality(
            build_broker(settings, read_only=True),
            settings.symbols,
            settings.state_dir / "heartbeat.json",
            previous_gate_failed=previous_gate_failed,
            max_age_seconds=settings.risk_max_data_age_seconds,
        )
        create_table_artifact(
            key=DATA_QUALITY_ARTIFACT,
            table=quality.rows,
            description=f"market data quality, profile {settings.profile}: {quality.result.evidence}"[:2000],
        )
        return quality.result

    return guarded("market data quality", check)


@task(name="disk space", cache_policy=NO_CACHE)
def disk(settings: Settings) -> CheckResult:
    return guarded("disk space", lambda: daily.disk_space(settings.state_dir))


@task(name="database size and connectivity", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def database(settings: Settings) -> CheckResult:
    return guarded(
        "database size and connectivity", lambda: daily.database(Ledger(settings.database_url, migrate=False))
    )


@task(name="backup age", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def backup_age(settings: Settings, now: datetime) -> CheckResult:
    return guarded("backup age", lambda: daily.backup_age(cold_store_from_settings(settings), now))


@flow(
    name="daily-checklist",
    log_prints=False,
    persist_result=False,
    timeout_seconds=600,
    **RUNBOOK_HOOKS,
)
def daily_checklist(profile: str = "dev") -> dict[str, str]:
    """The morning checklist; returns {item: status}."""
    settings = load_settings(profile=profile)
    ledger = Ledger(settings.database_url)  # migrates once here; the tasks' ledgers (threads) do not
    started = datetime.now(UTC)
    previous = ledger.checklist_runs("daily")
    since = previous[0].started_at if previous else None
    futures = [
        preflight.submit(settings),
        telemetry.submit(settings, started),
        pnl.submit(settings, started),
        log_scan.submit(settings, since),
        heartbeat.submit(settings, started),
        guards.submit(settings),
        market_data_quality.submit(
            settings, daily.previous_gate_failed(previous[0].results_json if previous else None)
        ),
        disk.submit(settings),
        database.submit(settings),
        backup_age.submit(settings, started),
    ]
    results: list[CheckResult] = [f.result() for f in futures]
    notifier = notifier_from_settings(settings)
    return finish_checklist(
        "daily",
        "daily-checklist",
        "Morning checklist",
        results,
        started,
        profile,
        ledger,
        notifier,
        kind=IncidentKind.PARTIAL_FUNCTIONALITY_LOSS,
    )


def finish_checklist(
    checklist: str,
    key: str,
    title: str,
    results: list[CheckResult],
    started: datetime,
    profile: str,
    ledger: Ledger,
    notifier: Notifier,
    *,
    kind: IncidentKind,
    severity: Severity | None = None,
) -> dict[str, str]:
    """What every checklist flow does with its results: store the run in checklist_runs, open or resolve one
    incident per item, publish the table artifact `key` and the markdown summary `key`-summary."""
    status = worst(results)
    finished = datetime.now(UTC)
    run_id = str(flow_run.id) if flow_run.id else None
    ledger.record_checklist_run(checklist, status, [r.row() for r in results], started, finished, run_id)
    url = flow_run_url(flow_run.id) if flow_run.id else None
    report_checks(IncidentDesk(ledger, notifier), checklist, results, kind=kind, severity=severity, flow_run_url=url)
    create_table_artifact(
        key=key,
        table=[{"item": r.item, "status": r.status.upper(), "evidence": r.evidence} for r in results],
        description=f"{title}, {started:%Y-%m-%d %H:%M} UTC, profile {profile}: {status.upper()}",
    )
    create_markdown_artifact(key=f"{key}-summary", markdown=_summary(title, results, status, started, profile))
    get_run_logger().info("%s %s: %s", title, status.upper(), ", ".join(f"{r.item}={r.status}" for r in results))
    return {r.item: r.status for r in results}


ICON = {"pass": "✅", "warn": "⚠️", "fail": "❌"}


def _summary(title: str, results: list[CheckResult], status: str, at: datetime, profile: str) -> str:
    lines = [
        f"# {title}: {status.upper()}",
        "",
        f"{at:%Y-%m-%d %H:%M} UTC, profile `{profile}`: "
        f"{sum(r.status == 'pass' for r in results)} pass, {sum(r.status == 'warn' for r in results)} warn, "
        f"{sum(r.status == 'fail' for r in results)} fail.",
        "",
    ]
    lines += [f"- {ICON[r.status]} **{r.item}**: {r.evidence}" for r in results]
    return "\n".join(lines)
