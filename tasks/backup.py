"""Tasks of the backup flows: each calls one BackupManager step and adds retries, a timeout and tags.

Retries are safe because names are fixed before the first attempt: the dump's object name comes from its
timestamp, so a retried upload replaces the partial object of the attempt before, and a retried verify reads the
same object again. A dump whose read-back does not match is deleted and uploaded again by the next attempt.
"""

from __future__ import annotations

import threading
import time
from uuid import UUID

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from trader.backup import BackupInfo, BackupManager, LocalDump, RestoreReport

DUMP_RETRIES = 2
DUMP_RETRY_DELAYS: list[float] = [30, 120]  # the database restarting or failing over
UPLOAD_RETRIES = 4
UPLOAD_BACKOFF = exponential_backoff(backoff_factor=10)  # 10, 20, 40, 80 s: S3 throttling or a short outage
RETRY_JITTER = 0.2
PRUNE_RETRIES = 3
RESTORE_RETRIES = 2
RESTORE_RETRY_DELAYS: list[float] = [60, 300]

# Share of the progress bar per stage: (start %, end %).
STAGES = {"snapshot": (0.0, 20.0), "dump": (20.0, 40.0), "upload": (40.0, 75.0), "verify": (75.0, 95.0)}


class ProgressArtifact:
    """A Prefect progress artifact fed by BackupManager's progress(stage, done, total) callbacks.

    Updates at most every `min_interval` seconds (or on a step of `min_step` %), so a 10 GB upload in 8 MiB chunks
    does not make a thousand API calls. Never fails the backup: an artifact that cannot be updated is skipped.
    """

    def __init__(self, key: str, description: str, *, min_interval: float = 1.0, min_step: float = 5.0) -> None:
        self.description = description
        self.min_interval = min_interval
        self.min_step = min_step
        self.percent = 0.0
        self._shown = 0.0
        self._shown_at = 0.0
        self._lock = threading.Lock()
        created = create_progress_artifact(progress=0.0, key=key, description=description)
        self.artifact_id = created if isinstance(created, UUID) else None  # a UUID in sync flows

    def __call__(self, stage: str, done: int, total: int) -> None:
        start, end = STAGES.get(stage, (self.percent, self.percent))
        fraction = min(1.0, done / total) if total > 0 else 1.0
        self.set(start + (end - start) * fraction, f"{self.description}: {stage}")

    def set(self, percent: float, description: str | None = None, *, force: bool = False) -> None:
        with self._lock:
            self.percent = max(self.percent, min(100.0, percent))
            now = time.monotonic()
            due = self.percent - self._shown >= self.min_step or now - self._shown_at >= self.min_interval
            if self.artifact_id is None or not (force or due) or self.percent == self._shown:
                return
            try:
                update_progress_artifact(self.artifact_id, self.percent, description=description)
            except Exception:  # a progress bar is never worth a failed backup
                return
            self._shown, self._shown_at = self.percent, now

    def finish(self, description: str) -> None:
        self.set(100.0, description, force=True)


@task(
    name="dump-ledger",
    retries=DUMP_RETRIES,
    retry_delay_seconds=DUMP_RETRY_DELAYS,
    timeout_seconds=3 * 3600,
    tags=["ledger", "backup"],
    cache_policy=NO_CACHE,
)
def dump_ledger(manager: BackupManager, kind: str, progress: ProgressArtifact) -> LocalDump:
    """pg_dump (or SQLite online backup) into the work folder, with counts and checksums of the same snapshot."""
    return manager.dump(kind, progress)


@task(
    name="upload-and-verify-backup",
    retries=UPLOAD_RETRIES,
    retry_delay_seconds=UPLOAD_BACKOFF,
    retry_jitter_factor=RETRY_JITTER,
    timeout_seconds=3 * 3600,
    tags=["cold-storage", "backup"],
    cache_policy=NO_CACHE,
)
def upload_and_verify_backup(manager: BackupManager, dump: LocalDump, progress: ProgressArtifact) -> BackupInfo:
    """Upload the dump in chunks, read it back, compare sha256, then write the manifest (verified: true)."""
    manager.upload(dump, progress)
    return manager.verify(dump, progress)


@task(
    name="apply-backup-retention",
    retries=PRUNE_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=RETRY_JITTER,
    timeout_seconds=600,
    tags=["cold-storage", "backup"],
    cache_policy=NO_CACHE,
)
def apply_retention(manager: BackupManager) -> list[str]:
    """Keep 30 daily and 12 monthly backups; returns the object names deleted."""
    return manager.prune()


@task(
    name="restore-test",
    retries=RESTORE_RETRIES,
    retry_delay_seconds=RESTORE_RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    timeout_seconds=3 * 3600,
    tags=["ledger", "cold-storage", "backup"],
    cache_policy=NO_CACHE,
)
def restore_test(manager: BackupManager, target_admin_url: str | None) -> RestoreReport:
    """Restore the latest verified backup into a scratch database and compare it with its manifest."""
    return manager.restore_test(target_admin_url)
