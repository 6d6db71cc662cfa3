"""Tasks of the backup flows: each calls one BackupManager step and adds retries, a timeout and tags.

Retries are safe because names are fixed before the first attempt: the dump's object name comes from its
timestamp, so a retried upload replaces the partial object of the attempt before, and a retried verify reads the
same object again. A dump whose read-back does not match is deleted and uploaded again by the next attempt.
"""

from __future__ import annotations

from prefect import task

from prefect_adapter.artifacts import ProgressArtifact
from tasks.policies import BACKUP_DUMP, BACKUP_PRUNE, BACKUP_RESTORE, BACKUP_UPLOAD
from trader.backup import BackupInfo, BackupManager, LocalDump, RestoreReport

# Share of the progress bar per BackupManager stage: (start %, end %).
STAGES = {"snapshot": (0.0, 20.0), "dump": (20.0, 40.0), "upload": (40.0, 75.0), "verify": (75.0, 95.0)}


@task(name="dump-ledger", tags=["ledger", "backup"], **BACKUP_DUMP.options())
def dump_ledger(manager: BackupManager, kind: str, progress: ProgressArtifact) -> LocalDump:
    """pg_dump (or SQLite online backup) into the work folder, with counts and checksums of the same snapshot."""
    return manager.dump(kind, progress)


@task(name="upload-and-verify-backup", tags=["cold-storage", "backup"], **BACKUP_UPLOAD.options())
def upload_and_verify_backup(manager: BackupManager, dump: LocalDump, progress: ProgressArtifact) -> BackupInfo:
    """Upload the dump in chunks, read it back, compare sha256, then write the manifest (verified: true)."""
    manager.upload(dump, progress)
    return manager.verify(dump, progress)


@task(name="apply-backup-retention", tags=["cold-storage", "backup"], **BACKUP_PRUNE.options())
def apply_retention(manager: BackupManager) -> list[str]:
    """Keep 30 daily and 12 monthly backups; returns the object names deleted."""
    return manager.prune()


@task(name="restore-test", tags=["ledger", "cold-storage", "backup"], **BACKUP_RESTORE.options())
def restore_test(manager: BackupManager, target_admin_url: str | None) -> RestoreReport:
    """Restore the latest verified backup into a scratch database and compare it with its manifest."""
    return manager.restore_test(target_admin_url)
