"""Backups of the ledger database (every account's rows) to the cold tier, verified before they count, kept 30
daily and 12 monthly, and a restore test that proves a backup restores to the same rows, account by account.

A backup is two objects: the dump `backups/<kind>/<timestamp>.dump` (PostgreSQL, `pg_dump --format=custom`) or
`.sqlite` (SQLite online backup API), then its manifest `backups/<kind>/<timestamp>.manifest.json`.

Invariant: a backup is presented as complete only after it is verified. The manifest is written last, only after
the uploaded dump was read back from the cold tier and its sha256 matched, and carries `verified: true`; a dump
without such a manifest is never reported as a backup (and is deleted by `prune` after a day). Retention deletes a
backup's manifest before its dump, so a backup whose dump is gone never still looks verified.

The dump moves to and from the cold tier in chunks through the store's own file methods (`put_file`, `digest`,
`get_file`); the database engines (engines.py) dump and restore with counts and checksums of the same snapshot.

Log phrases (logger `trader.backup.manager`): "Backup verified", "Backup verification FAILED", "Restore test passed",
"Restore test FAILED", "Pruned N backups".
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import tempfile
import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from trader.backup.engines import DatabaseEngine, engine_for
from trader.backup.models import (
    KEEP_DAILY,
    KEEP_MONTHLY,
    ORPHAN_GRACE,
    PREFIX,
    BackupInfo,
    BackupVerificationFailed,
    LocalDump,
    NoVerifiedBackup,
    Progress,
    RestoreReport,
    TableStats,
    backup_names,
    compare_with_manifest,
    no_progress,
    stamp_of,
)
from trader.settings import Settings
from trader.state.cold import CHUNK_SIZE, ObjectNotFound, StreamingObjectStore, cold_store_from_settings

log = logging.getLogger(__name__)


class BackupManager:
    """Backs the ledger database at database_url up to the cold tier, keeps 30 daily and 12 monthly backups, and
    restore-tests the latest one. Dumps are written under workdir first and removed once verified."""

    def __init__(
        self, database_url: str, cold: StreamingObjectStore, *, workdir: Path | str, chunk_size: int = CHUNK_SIZE
    ):
        self.workdir = Path(workdir)
        self.database: DatabaseEngine = engine_for(database_url, self.workdir)
        self.engine = self.database.name
        self.cold = cold
        self.chunk_size = chunk_size

    # --- create: dump, upload, verify

    def create(
        self, kind: str = "daily", progress: Progress | None = None, *, at: datetime | None = None
    ) -> BackupInfo:
        """Dump the database, upload it in chunks, read it back and compare sha256, then write the manifest."""
        dump = self.dump(kind, progress, at=at)
        self.upload(dump, progress)
        return self.verify(dump, progress)

    def dump(self, kind: str = "daily", progress: Progress | None = None, *, at: datetime | None = None) -> LocalDump:
        """Write a consistent dump to the work folder with the row counts and checksums of the same snapshot."""
        report = progress or no_progress
        created_at = (at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        name, manifest_name = backup_names(kind, created_at, self.engine)
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / name.replace("/", "_")
        started = time.perf_counter()
        stats, tools = self.database.dump(path, report)
        size = path.stat().st_size
        dump = LocalDump(
            kind=kind,
            name=name,
            manifest_name=manifest_name,
            path=path,
            engine=self.engine,
            created_at=created_at,
            sha256=self._sha256_file(path),
            size_bytes=size,
            stats=stats,
            tools=tools,
            source=self.database.source(),
            dump_seconds=time.perf_counter() - started,
        )
        log.info(
            "Dumped %s (%s, %d bytes, %d rows in %d tables) in %.1f s",
            name,
            self.engine,
            size,
            sum(stats.row_counts.values()),
            len(stats.row_counts),
            dump.dump_seconds,
        )
        return dump

    def upload(self, dump: LocalDump, progress: Progress | None = None) -> str:
        """Upload the dump under its name in chunks (replacing a partial earlier attempt); returns its URI."""
        report = progress or no_progress
        started = time.perf_counter()
        report("upload", 0, dump.size_bytes)
        uri = self.cold.put_file(
            dump.name,
            dump.path,
            chunk_size=self.chunk_size,
            on_progress=lambda done, total: report("upload", done, total),
        )
        log.info("Uploaded %s to %s in %.1f s", dump.name, self.cold.name, time.perf_counter() - started)
        return uri

    def verify(self, dump: LocalDump, progress: Progress | None = None) -> BackupInfo:
        """Read the uploaded dump back; if its sha256 matches write the manifest (verified: true), else delete it."""
        report = progress or no_progress
        started = time.perf_counter()
        stored = self.cold.digest(
            dump.name, chunk_size=self.chunk_size, on_progress=lambda done, total: report("verify", done, total)
        )
        verify_seconds = time.perf_counter() - started
        if stored.sha256 != dump.sha256 or stored.size != dump.size_bytes:
            with suppress(Exception):  # a leftover without a manifest is never reported; prune removes it later
                self.cold.delete(dump.name)
            log.error(
                "Backup verification FAILED for %s: read back %d bytes sha256 %s, uploaded %d bytes sha256 %s",
                dump.name,
                stored.size,
                stored.sha256,
                dump.size_bytes,
                dump.sha256,
            )
            raise BackupVerificationFailed(
                f"backup {dump.name} in {self.cold.name} does not match the dump uploaded (sha256 "
                f"{stored.sha256[:12]} != {dump.sha256[:12]}, {stored.size} != {dump.size_bytes} bytes); it was "
                "deleted: run the backup again"
            )
        info = BackupInfo(
            name=dump.name,
            kind=dump.kind,
            manifest_name=dump.manifest_name,
            engine=dump.engine,
            created_at=dump.created_at,
            sha256=dump.sha256,
            size_bytes=dump.size_bytes,
            row_counts=dict(dump.stats.row_counts),
            table_checksums=dict(dump.stats.checksums),
            tools=dict(dump.tools),
            source=dict(dump.source),
            verified=True,
            verified_at=datetime.now(UTC),
            timings={"dump_seconds": round(dump.dump_seconds, 3), "verify_seconds": round(verify_seconds, 3)},
            account_row_counts={account: dict(tables) for account, tables in dump.stats.account_counts.items()},
        )
        manifest = json.dumps(info.to_manifest(), indent=2, sort_keys=True).encode()
        self.cold.put(dump.manifest_name, manifest)  # last: only now does the backup count
        dump.path.unlink(missing_ok=True)
        log.info("Backup verified: %s (%d bytes, sha256 %s)", dump.name, dump.size_bytes, dump.sha256)
        return info

    def _sha256_file(self, path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(self.chunk_size):
                digest.update(chunk)
        return digest.hexdigest()

    # --- what is in the cold tier

    def list(self, kind: str | None = None) -> list[BackupInfo]:
        """Verified backups, oldest first (dumps without a verified manifest are not backups)."""
        found = []
        prefix = f"{PREFIX}/{kind}/" if kind else f"{PREFIX}/"
        for name in self.cold.list(prefix):
            if not name.endswith(".manifest.json") or stamp_of(name) is None:
                continue
            try:
                info = BackupInfo.from_manifest(json.loads(self.cold.get(name)))
            except ObjectNotFound:
                continue  # pruned while we listed
            except (ValueError, KeyError, TypeError) as error:
                log.warning("Ignoring unreadable backup manifest %s: %s", name, error)
                continue
            if info.verified:
                found.append(info)
        return sorted(found, key=lambda info: (info.created_at, info.name))

    def latest(self, kind: str | None = None) -> BackupInfo | None:
        """The newest verified backup (of one kind, or any), or None."""
        backups = self.list(kind)
        return backups[-1] if backups else None

    def backup_age(self, *, now: datetime | None = None) -> timedelta | None:
        """How old the newest verified backup is (for the daily checklist), or None when there is none."""
        latest = self.latest()
        if latest is None:
            return None
        return (now or datetime.now(UTC)) - latest.created_at

    # --- retention

    def prune(self, *, now: datetime | None = None) -> builtins.list[str]:
        """Keep the newest 30 daily and 12 monthly (monthly + full) backups; delete the rest, manifest first, and
        dumps a day old that never got a verified manifest. Returns the object names deleted."""
        backups = self.list()
        daily = [b for b in backups if b.kind == "daily"]
        monthly = [b for b in backups if b.kind in ("monthly", "full")]
        expired = daily[: max(0, len(daily) - KEEP_DAILY)] + monthly[: max(0, len(monthly) - KEEP_MONTHLY)]
        deleted: list[str] = []
        for info in expired:
            # The manifest goes first: a backup whose dump is gone must never still look verified.
            for name in (info.manifest_name, info.name):
                self.cold.delete(name)
                deleted.append(name)
        verified = {b.name for b in backups} | {b.manifest_name for b in backups}
        cutoff = (now or datetime.now(UTC)) - ORPHAN_GRACE
        for name in self.cold.list(f"{PREFIX}/"):
            stamp = stamp_of(name)
            if stamp is not None and name not in verified and name not in deleted and stamp < cutoff:
                self.cold.delete(name)
                deleted.append(name)
        if deleted:
            log.info("Pruned %d backups (%d objects) from %s", len(expired), len(deleted), self.cold.name)
        return deleted

    # --- restore test

    def restore_test(
        self, target_admin_url: str | None = None, *, backup: BackupInfo | None = None, jobs: int = 2
    ) -> RestoreReport:
        """Restore the latest verified backup into a scratch database (PostgreSQL: created on the server of
        target_admin_url, default this database's server, and dropped afterwards; SQLite: a temp file) and compare
        its row counts and per-table checksums with the manifest."""
        info = backup or self.latest()
        if info is None:
            raise NoVerifiedBackup(f"no verified backup under {PREFIX}/ in {self.cold.name}: run daily-backup first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="restore-test-", dir=self.workdir) as folder:
            local = Path(folder) / Path(info.name).name
            started = time.perf_counter()
            stored = self.cold.get_file(info.name, local, chunk_size=self.chunk_size)
            download_seconds = time.perf_counter() - started
            if stored.sha256 != info.sha256:
                corrupt = (
                    f"object sha256 {stored.sha256[:12]} differs from the manifest's {info.sha256[:12]}: the stored "
                    "dump is corrupt"
                )
                return self._restore_report(
                    info, "(not restored)", [corrupt], TableStats(), stored.size, download_seconds, 0.0, 0.0
                )
            restored = self.database.restore(local, admin_url=target_admin_url, jobs=jobs)
        return self._restore_report(
            info,
            restored.restored_into,
            compare_with_manifest(info, restored.stats),
            restored.stats,
            stored.size,
            download_seconds,
            restored.restore_seconds,
            restored.compare_seconds,
        )

    def _restore_report(
        self,
        info: BackupInfo,
        target: str,
        mismatches: builtins.list[str],
        stats: TableStats,
        size: int,
        download_seconds: float,
        restore_seconds: float,
        compare_seconds: float,
    ) -> RestoreReport:
        report = RestoreReport(
            backup=info.name,
            engine=info.engine,
            restored_into=target,
            ok=not mismatches,
            mismatches=mismatches,
            expected_counts=dict(info.row_counts),
            restored_counts=dict(stats.row_counts),
            size_bytes=size,
            download_seconds=download_seconds,
            restore_seconds=restore_seconds,
            compare_seconds=compare_seconds,
            expected_account_counts=dict(info.account_row_counts),
            restored_account_counts=dict(stats.account_counts),
        )
        if report.ok:
            log.info("%s", report.summary())
        else:
            log.error("%s", report.summary())
        return report


def backup_manager_from_settings(settings: Settings) -> BackupManager:
    """The ledger at DATABASE_URL backed up to COLD_STORAGE_URL (no local fallback: a backup that cannot reach S3
    fails and is retried, it never counts as made), dumps staged under STATE_DIR/backups."""
    cold = cold_store_from_settings(settings, fallback=False)
    return BackupManager(settings.database_url, cold, workdir=settings.state_dir / "backups")
