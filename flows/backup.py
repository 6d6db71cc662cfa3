"""daily-backup, full-backup and backup-restore-test: the runbook's "Backup and Recovery" as flows.

A backup counts only once the object read back from the cold tier matches the dump (sha256) and its manifest is
written with `verified: true`; the result artifact says so. Settings (DATABASE_URL, COLD_STORAGE_URL, STATE_DIR)
come from the environment. Backups never use the local S3 fallback: during an outage the upload task retries
with backoff and, if S3 stays down, the run fails (an incident), instead of reporting a backup that is not in S3.

No `account` parameter and no per-account mapping, unlike the other runbook flows (flows/accounts.py): every account's
rows live in the one ledger database and a backup is one consistent dump of all of it (pg_dump or SQLite's online
backup), so one run covers every declared account. Dumping per account would take N snapshots at N moments, and
restoring them would not give back one consistent database.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.artifacts import ProgressArtifact, publish_markdown
from tasks.backup import STAGES, apply_retention, dump_ledger, restore_test, upload_and_verify_backup
from trader.backup import BackupError, backup_manager_from_settings
from trader.backup.render import backup_markdown, restore_markdown, size_text
from trader.settings import load_settings


def _backup(kind: str, profile: str, flow_name: str) -> dict[str, Any]:
    """Dump, upload, verify, apply retention: one backup of this kind, with progress and result artifacts."""
    logger = get_run_logger()
    manager = backup_manager_from_settings(load_settings(profile=profile))
    progress = ProgressArtifact(f"{flow_name}-progress", f"{kind} backup of the ledger", stages=STAGES)
    dump = dump_ledger(manager, kind, progress)
    info = upload_and_verify_backup(manager, dump, progress)
    pruned = apply_retention(manager)
    progress.finish(f"{kind} backup verified: {info.name}")
    publish_markdown(f"{flow_name}-result", backup_markdown(info, pruned), description=f"{kind} backup {info.name}")
    logger.info("Backup verified: %s (%s, sha256 %s)", info.name, size_text(info.size_bytes), info.sha256[:12])
    return {
        "name": info.name,
        "kind": info.kind,
        "sha256": info.sha256,
        "size_bytes": info.size_bytes,
        "rows": info.total_rows,
        "verified": info.verified,
        "pruned": len(pruned),
    }


@flow(name="daily-backup", log_prints=False, persist_result=False, timeout_seconds=4 * 3600, **RUNBOOK_HOOKS)
def daily_backup(profile: str = "dev") -> dict[str, Any]:
    """Back the ledger up as a daily backup (30 kept) and apply retention."""
    return _backup("daily", profile, "daily-backup")


@flow(name="full-backup", log_prints=False, persist_result=False, timeout_seconds=4 * 3600, **RUNBOOK_HOOKS)
def full_backup(profile: str = "dev") -> dict[str, Any]:
    """Back the ledger up as a full backup (kept with the monthly ones, 12 kept) and apply retention."""
    return _backup("full", profile, "full-backup")


@flow(name="backup-restore-test", log_prints=False, persist_result=False, timeout_seconds=4 * 3600, **RUNBOOK_HOOKS)
def backup_restore_test(profile: str = "dev", target_admin_url: str | None = None) -> dict[str, Any]:
    """Restore the latest verified backup into a scratch database (dropped afterwards) and compare its row counts
    and per-table checksums with the manifest; the run fails when anything differs.

    target_admin_url: a PostgreSQL URL on the server to restore into (needs CREATEDB); default DATABASE_URL's.
    """
    logger = get_run_logger()
    manager = backup_manager_from_settings(load_settings(profile=profile))
    progress = ProgressArtifact("backup-restore-test-progress", "restore test of the latest backup")
    progress.set(10.0, "restore test: downloading and restoring", force=True)
    report = restore_test(manager, target_admin_url)
    progress.finish(f"restore test {'passed' if report.ok else 'FAILED'}: {report.backup}")
    publish_markdown("backup-restore-test-result", restore_markdown(report), description=report.summary())
    if not report.ok:
        raise BackupError(report.summary())
    logger.info("%s", report.summary())
    return {
        "backup": report.backup,
        "ok": report.ok,
        "rows": sum(report.restored_counts.values()),
        "restore_seconds": round(report.restore_seconds, 3),
    }
