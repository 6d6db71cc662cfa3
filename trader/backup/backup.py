"""Backups of the ledger database to the cold tier, verified before they count, and a restore test that proves
a backup restores to the same rows.

A backup is two objects: the dump `backups/<kind>/<timestamp>.dump` (PostgreSQL, `pg_dump --format=custom`) or
`.sqlite` (SQLite online backup API), then its manifest `backups/<kind>/<timestamp>.manifest.json`. The manifest
is written last, only after the uploaded dump was read back and its sha256 matched, and carries `verified: true`;
a dump without such a manifest is never reported as a backup (and is deleted by `prune` after a day).

Row counts and per-table checksums in the manifest are taken in the same snapshot as the dump (PostgreSQL: the
dump runs on a snapshot exported by the transaction that counts; SQLite: counted on the backup copy itself), so a
restore test compares like with like: md5 over every row's md5 in primary-key order, computed the same way on the
restored copy.

Log phrases (logger `perps_bot.backup`): "Backup verified", "Backup verification FAILED", "Restore test passed",
"Restore test FAILED", "Pruned N backups".
"""

from __future__ import annotations

import builtins
import glob
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from trader.errors import TraderError
from trader.settings import Settings
from trader.state.base import ObjectStore
from trader.state.cold import LocalFolderStore, ObjectNotFound, S3Store, check_name, cold_store_from_settings

log = logging.getLogger("perps_bot.backup")

BackupKind = Literal["daily", "monthly", "full"]
KINDS: tuple[str, ...] = get_args(BackupKind)
Engine = Literal["postgresql", "sqlite"]
Stage = Literal["snapshot", "dump", "upload", "verify"]
# progress(stage, done, total): tables counted, SQLite pages copied, bytes uploaded or read back.
Progress = Callable[[str, int, int], None]

PREFIX = "backups"
KEEP_DAILY = 30
KEEP_MONTHLY = 12  # full backups count as monthly
ORPHAN_GRACE = timedelta(days=1)  # a dump without a verified manifest this old is a failed run's leftover
CHUNK_SIZE = 8 * 2**20  # S3 multipart parts must be >= 5 MiB (except the last)
MANIFEST_VERSION = 1
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
CHECKSUM_METHOD = "md5 over each row's md5 in primary-key order (PostgreSQL: row::text; SQLite: repr of the row)"
_NAME = re.compile(r"^backups/(daily|monthly|full)/(\d{8}T\d{6}Z)\.(dump|sqlite|manifest\.json)$")


class BackupError(TraderError):
    """A backup or restore test could not be made; the message says which step and why."""


class BackupVerificationFailed(BackupError):
    """The object read back from the cold tier is not the dump that was uploaded; it was deleted."""


class NoVerifiedBackup(BackupError):
    """The cold tier holds no verified backup to restore."""


def _noop(_stage: str, _done: int, _total: int) -> None:
    pass


# --- what a backup is ---------------------------------------------------------------------------------------------


@dataclass
class TableStats:
    """Rows and checksum per table, taken in one snapshot."""

    row_counts: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass
class LocalDump:
    """A dump written to the work folder, not yet in the cold tier; `name` is where it will be uploaded."""

    kind: str
    name: str
    manifest_name: str
    path: Path
    engine: str
    created_at: datetime
    sha256: str
    size_bytes: int
    stats: TableStats
    tools: dict[str, str]
    source: dict[str, Any]
    dump_seconds: float


@dataclass
class BackupInfo:
    """One backup as its manifest describes it."""

    name: str
    kind: str
    manifest_name: str
    engine: str
    created_at: datetime
    sha256: str
    size_bytes: int
    row_counts: dict[str, int]
    table_checksums: dict[str, str]
    tools: dict[str, str]
    source: dict[str, Any]
    verified: bool
    verified_at: datetime | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.row_counts.values())

    def to_manifest(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["verified_at"] = self.verified_at.isoformat() if self.verified_at else None
        data["format_version"] = MANIFEST_VERSION
        data["checksum_method"] = CHECKSUM_METHOD
        return data

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> BackupInfo:
        verified_at = data.get("verified_at")
        return cls(
            name=data["name"],
            kind=data["kind"],
            manifest_name=data["manifest_name"],
            engine=data["engine"],
            created_at=datetime.fromisoformat(data["created_at"]),
            sha256=data["sha256"],
            size_bytes=int(data["size_bytes"]),
            row_counts={k: int(v) for k, v in data["row_counts"].items()},
            table_checksums=dict(data["table_checksums"]),
            tools=dict(data.get("tools", {})),
            source=dict(data.get("source", {})),
            verified=data.get("verified") is True,
            verified_at=datetime.fromisoformat(verified_at) if verified_at else None,
            timings=dict(data.get("timings", {})),
        )


@dataclass
class RestoreReport:
    """What a restore test found: the backup, where it was restored, and every difference from its manifest."""

    backup: str
    engine: str
    restored_into: str
    ok: bool
    mismatches: list[str]
    expected_counts: dict[str, int]
    restored_counts: dict[str, int]
    size_bytes: int
    download_seconds: float
    restore_seconds: float
    compare_seconds: float

    def summary(self) -> str:
        rows = sum(self.restored_counts.values())
        if self.ok:
            return (
                f"Restore test passed: {self.backup} restored {rows} rows in {len(self.restored_counts)} tables, "
                "counts and checksums match the manifest"
            )
        return f"Restore test FAILED for {self.backup}: " + "; ".join(self.mismatches)


def backup_names(kind: str, created_at: datetime, engine: str) -> tuple[str, str]:
    """The dump's and the manifest's object names for a backup of this kind taken at created_at."""
    if kind not in KINDS:
        raise BackupError(f"backup kind {kind!r} is not allowed: use one of {', '.join(KINDS)}")
    stamp = created_at.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    suffix = "dump" if engine == "postgresql" else "sqlite"
    return f"{PREFIX}/{kind}/{stamp}.{suffix}", f"{PREFIX}/{kind}/{stamp}.manifest.json"


def _stamp_of(name: str) -> datetime | None:
    match = _NAME.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(2), TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


# --- the manager ------------------------------------------------------------------------------------------------


class BackupManager:
    """Backs the ledger database at database_url up to the cold tier, keeps 30 daily and 12 monthly backups, and
    restore-tests the latest one. Dumps are written under workdir first and removed once verified."""

    def __init__(self, database_url: str, cold: ObjectStore, *, workdir: Path | str, chunk_size: int = CHUNK_SIZE):
        self.database_url = database_url
        self.url = make_url(database_url)
        backend = self.url.get_backend_name()
        if backend not in ("postgresql", "sqlite"):
            raise BackupError(f"DATABASE_URL: backups support postgresql and sqlite, not {backend}")
        self.engine: Engine = "postgresql" if backend == "postgresql" else "sqlite"
        self.cold = cold
        self.workdir = Path(workdir)
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
        report = progress or _noop
        created_at = (at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        name, manifest_name = backup_names(kind, created_at, self.engine)
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / name.replace("/", "_")
        started = time.perf_counter()
        if self.engine == "postgresql":
            stats, tools = self._dump_postgres(path, report)
        else:
            stats, tools = self._dump_sqlite(path, report)
        size = path.stat().st_size
        dump = LocalDump(
            kind=kind,
            name=name,
            manifest_name=manifest_name,
            path=path,
            engine=self.engine,
            created_at=created_at,
            sha256=_sha256_file(path),
            size_bytes=size,
            stats=stats,
            tools=tools,
            source=self._source(),
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
        report = progress or _noop
        started = time.perf_counter()
        uri = _upload_file(self.cold, dump.name, dump.path, dump.size_bytes, self.chunk_size, report)
        log.info("Uploaded %s to %s in %.1f s", dump.name, self.cold.name, time.perf_counter() - started)
        return uri

    def verify(self, dump: LocalDump, progress: Progress | None = None) -> BackupInfo:
        """Read the uploaded dump back; if its sha256 matches write the manifest (verified: true), else delete it."""
        report = progress or _noop
        started = time.perf_counter()
        digest, size = _read_back(self.cold, dump.name, self.chunk_size, report)
        verify_seconds = time.perf_counter() - started
        if digest != dump.sha256 or size != dump.size_bytes:
            with suppress(Exception):  # a leftover without a manifest is never reported; prune removes it later
                self.cold.delete(dump.name)
            log.error(
                "Backup verification FAILED for %s: read back %d bytes sha256 %s, uploaded %d bytes sha256 %s",
                dump.name,
                size,
                digest,
                dump.size_bytes,
                dump.sha256,
            )
            raise BackupVerificationFailed(
                f"backup {dump.name} in {self.cold.name} does not match the dump uploaded (sha256 {digest[:12]} "
                f"!= {dump.sha256[:12]}, {size} != {dump.size_bytes} bytes); it was deleted: run the backup again"
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
        )
        manifest = json.dumps(info.to_manifest(), indent=2, sort_keys=True).encode()
        self.cold.put(dump.manifest_name, manifest)  # last: only now does the backup count
        dump.path.unlink(missing_ok=True)
        log.info("Backup verified: %s (%d bytes, sha256 %s)", dump.name, dump.size_bytes, dump.sha256)
        return info

    # --- what is in the cold tier

    def list(self, kind: str | None = None) -> list[BackupInfo]:
        """Verified backups, oldest first (dumps without a verified manifest are not backups)."""
        found = []
        prefix = f"{PREFIX}/{kind}/" if kind else f"{PREFIX}/"
        for name in self.cold.list(prefix):
            if not name.endswith(".manifest.json") or _stamp_of(name) is None:
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
            stamp = _stamp_of(name)
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
            digest, size = _download(self.cold, info.name, local, self.chunk_size)
            download_seconds = time.perf_counter() - started
            if digest != info.sha256:
                return self._restore_report(
                    info,
                    "(not restored)",
                    [
                        f"object sha256 {digest[:12]} differs from the manifest's {info.sha256[:12]}: the stored dump "
                        "is corrupt"
                    ],
                    TableStats(),
                    size,
                    download_seconds,
                    0.0,
                    0.0,
                )
            if info.engine == "postgresql":
                target, stats, restore_seconds, compare_seconds = self._restore_postgres(
                    local, target_admin_url or self.database_url, jobs
                )
            else:
                target, stats, restore_seconds, compare_seconds = _restore_sqlite(local)
        mismatches = _compare(info, stats)
        return self._restore_report(
            info, target, mismatches, stats, size, download_seconds, restore_seconds, compare_seconds
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
        )
        if report.ok:
            log.info("%s", report.summary())
        else:
            log.error("%s", report.summary())
        return report

    # --- PostgreSQL

    def _source(self) -> dict[str, Any]:
        if self.engine == "sqlite":
            return {"engine": "sqlite", "path": self.url.database}
        return {"engine": "postgresql", "host": self.url.host, "port": self.url.port, "database": self.url.database}

    def _dump_postgres(self, path: Path, report: Progress) -> tuple[TableStats, dict[str, str]]:
        engine = create_engine(_sqlalchemy_url(self.url), isolation_level="REPEATABLE READ", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                major, server_version = _server_version(connection)
                pg_dump = find_pg_tool("pg_dump", major)
                _session_settings(connection)
                # The dump and the counts share one snapshot: pg_dump imports the one this transaction exports.
                snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
                args = [
                    pg_dump,
                    "--format=custom",
                    f"--snapshot={snapshot}",
                    f"--file={path}",
                    *_pg_connection_args(self.url),
                ]
                report("dump", 0, 1)
                with _stderr_file(self.workdir) as stderr:
                    process = subprocess.Popen(args, env=_pg_env(self.url), stdout=subprocess.DEVNULL, stderr=stderr)
                    try:
                        stats = _postgres_stats(connection, report)
                    finally:
                        returncode = process.wait()
                    if returncode != 0:
                        path.unlink(missing_ok=True)
                        raise BackupError(f"pg_dump of {self._describe()} failed (exit {returncode}): {_tail(stderr)}")
                report("dump", 1, 1)
                connection.rollback()
        finally:
            engine.dispose()
        tools = {"pg_dump": _tool_version(pg_dump), "server": server_version, **_runtime_versions()}
        return stats, tools

    def _restore_postgres(self, local: Path, admin_url: str, jobs: int) -> tuple[str, TableStats, float, float]:
        admin = make_url(admin_url)
        if admin.get_backend_name() != "postgresql":
            raise BackupError(f"restore test target must be a PostgreSQL URL, not {admin.get_backend_name()}")
        scratch = f"restore_test_{datetime.now(UTC):%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"
        engine = create_engine(_sqlalchemy_url(admin), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                major, _ = _server_version(connection)
                connection.exec_driver_sql(f'CREATE DATABASE "{scratch}"')
            try:
                target = admin.set(database=scratch)
                started = time.perf_counter()
                args = [
                    find_pg_tool("pg_restore", major),
                    "--no-owner",
                    "--no-privileges",
                    "--exit-on-error",
                    f"--jobs={max(1, jobs)}",
                    *_pg_connection_args(target),
                    str(local),
                ]
                with _stderr_file(self.workdir) as stderr:
                    returncode = subprocess.run(args, env=_pg_env(target), stdout=subprocess.DEVNULL, stderr=stderr)
                    if returncode.returncode != 0:
                        raise BackupError(
                            f"pg_restore into scratch database {scratch} failed (exit {returncode.returncode}): "
                            f"{_tail(stderr)}"
                        )
                restore_seconds = time.perf_counter() - started
                started = time.perf_counter()
                check = create_engine(_sqlalchemy_url(target), isolation_level="REPEATABLE READ", poolclass=NullPool)
                try:
                    with check.connect() as connection:
                        _session_settings(connection)
                        stats = _postgres_stats(connection, _noop)
                        connection.rollback()
                finally:
                    check.dispose()
                compare_seconds = time.perf_counter() - started
            finally:
                with engine.connect() as connection:
                    connection.exec_driver_sql(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                        "AND pid <> pg_backend_pid()",
                        (scratch,),
                    )
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{scratch}"')
        finally:
            engine.dispose()
        return f"postgresql database {scratch} (dropped)", stats, restore_seconds, compare_seconds

    def _describe(self) -> str:
        return self.url.render_as_string(hide_password=True)

    # --- SQLite

    def _dump_sqlite(self, path: Path, report: Progress) -> tuple[TableStats, dict[str, str]]:
        source_path = self.url.database
        if not source_path or source_path == ":memory:" or not Path(source_path).is_file():
            raise BackupError(f"no SQLite ledger file at {source_path!r}: check DATABASE_URL")
        path.unlink(missing_ok=True)
        source = sqlite3.connect(source_path)
        target = sqlite3.connect(path)
        try:
            # The online backup API copies a consistent snapshot while writers carry on (in steps of 1024 pages).
            source.backup(target, pages=1024, progress=lambda _status, left, total: report("dump", total - left, total))
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            stats = _sqlite_stats(target, report)
        finally:
            target.close()
            source.close()
        return stats, _runtime_versions()


# --- the cold tier in chunks ------------------------------------------------------------------------------------


def _upload_file(store: ObjectStore, name: str, path: Path, size: int, chunk: int, report: Progress) -> str:
    """Upload a file in chunks where the store allows it (folder, S3 multipart), else in one put."""
    report("upload", 0, size)
    if isinstance(store, LocalFolderStore):
        return _upload_local(store, name, path, size, chunk, report)
    if isinstance(store, S3Store):
        return _upload_s3(store, name, path, size, chunk, report)
    uri = store.put(name, path.read_bytes())
    report("upload", size, size)
    return uri


def _local_path(store: LocalFolderStore, name: str) -> Path:
    return store.root.joinpath(*check_name(name).split("/"))


def _upload_local(store: LocalFolderStore, name: str, path: Path, size: int, chunk: int, report: Progress) -> str:
    target = _local_path(store, name)
    tmp_dir = store.root / ".tmp"  # LocalFolderStore's own temp folder, hidden from list()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{target.name}.{uuid.uuid4().hex}"
    done = 0
    try:
        with open(path, "rb") as source, open(tmp, "wb") as handle:
            while data := source.read(chunk):
                handle.write(data)
                done += len(data)
                report("upload", done, size)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)  # readers see the whole dump or none of it
    finally:
        tmp.unlink(missing_ok=True)
    return target.resolve().as_uri()


def _s3_key(store: S3Store, name: str) -> str:
    check_name(name)
    return f"{store.prefix}/{name}" if store.prefix else name


def _upload_s3(store: S3Store, name: str, path: Path, size: int, chunk: int, report: Progress) -> str:
    key = _s3_key(store, name)
    call = store.fs.call_s3
    # S3Store._errors maps "S3 did not answer" to TierUnavailable (retried by the flow) and refusals to errors.
    with store._errors("put", name):
        if size <= chunk:
            call("put_object", Bucket=store.bucket, Key=key, Body=path.read_bytes())
            report("upload", size, size)
            return f"s3://{store.bucket}/{key}"
        upload_id = call("create_multipart_upload", Bucket=store.bucket, Key=key)["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            done = 0
            with open(path, "rb") as source:
                while data := source.read(chunk):
                    number = len(parts) + 1
                    answer = call(
                        "upload_part", Bucket=store.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                    )
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                    done += len(data)
                    report("upload", done, size)
            # Completing is atomic: until now readers see the previous object (or none), never a partial one.
            call(
                "complete_multipart_upload",
                Bucket=store.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with suppress(Exception):
                call("abort_multipart_upload", Bucket=store.bucket, Key=key, UploadId=upload_id)
            raise
    return f"s3://{store.bucket}/{key}"


def _read_chunks(store: ObjectStore, name: str, chunk: int) -> Iterator[tuple[bytes, int]]:
    """The object's bytes in chunks, each with the object's total size; streamed from folders and S3."""
    if isinstance(store, LocalFolderStore):
        local = _local_path(store, name)
        if not local.is_file():
            raise ObjectNotFound(f"no object {name} in {store.root}")
        with open(local, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            while data := handle.read(chunk):
                yield data, size
        return
    if isinstance(store, S3Store):
        path = f"{store.bucket}/{_s3_key(store, name)}"
        with store._errors("get", name):
            size = int(store.fs.info(path)["size"])
        offset = 0
        while offset < size:
            with store._errors("get", name):
                data = bytes(store.fs.cat_file(path, start=offset, end=min(offset + chunk, size)))
            if not data:
                break
            offset += len(data)
            yield data, size
        return
    data = store.get(name)
    yield data, len(data)


def _read_back(store: ObjectStore, name: str, chunk: int, report: Progress) -> tuple[str, int]:
    """sha256 and size of the stored object, read back from the store (not from any local copy)."""
    digest, done = hashlib.sha256(), 0
    for data, size in _read_chunks(store, name, chunk):
        digest.update(data)
        done += len(data)
        report("verify", done, size)
    return digest.hexdigest(), done


def _download(store: ObjectStore, name: str, target: Path, chunk: int) -> tuple[str, int]:
    digest, done = hashlib.sha256(), 0
    with open(target, "wb") as handle:
        for data, _size in _read_chunks(store, name, chunk):
            digest.update(data)
            handle.write(data)
            done += len(data)
    return digest.hexdigest(), done


# --- row counts and checksums -----------------------------------------------------------------------------------


# psycopg2 reads % as a parameter marker even without parameters: literal percent signs are doubled.
_PG_TABLES = """
SELECT n.nspname, c.relname, format('%%I.%%I', n.nspname, c.relname),
       (SELECT string_agg('_row_.' || quote_ident(a.attname), ', ' ORDER BY k.ord)
          FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.indisprimary)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
 ORDER BY 1, 2
"""


def _session_settings(connection: Connection) -> None:
    """Fix the settings that change a row's text, so both sides of a comparison render rows alike."""
    connection.exec_driver_sql("SET TIME ZONE 'UTC'")
    connection.exec_driver_sql("SET datestyle = 'ISO, YMD'")
    connection.exec_driver_sql("SET extra_float_digits = 1")
    connection.exec_driver_sql("SET bytea_output = 'hex'")


def _postgres_stats(connection: Connection, report: Progress) -> TableStats:
    """Row counts and md5 checksums of every user table, in this connection's snapshot."""
    tables = connection.exec_driver_sql(_PG_TABLES).all()
    stats = TableStats()
    for done, (schema, table, qualified, primary_key) in enumerate(tables, start=1):
        key = table if schema == "public" else f"{schema}.{table}"
        order = primary_key or "_row_::text"
        count, checksum = connection.exec_driver_sql(
            f"SELECT count(*), md5(coalesce(string_agg(md5(_row_::text), '' ORDER BY {order}), '')) "
            f"FROM {qualified} AS _row_"
        ).one()
        stats.row_counts[key] = int(count)
        stats.checksums[key] = str(checksum)
        report("snapshot", done, len(tables))
    return stats


def _sqlite_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_stats(connection: sqlite3.Connection, report: Progress) -> TableStats:
    """Row counts and md5 checksums of every table, rows in primary-key (else rowid) order."""
    tables = [
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    stats = TableStats()
    for done, table in enumerate(tables, start=1):
        columns = connection.execute(f"PRAGMA table_info({_sqlite_quote(table)})").fetchall()
        primary_key = [column[1] for column in sorted(columns, key=lambda c: c[5]) if column[5] > 0]
        order = ", ".join(_sqlite_quote(c) for c in primary_key) or "rowid"
        table_digest, count = hashlib.md5(usedforsecurity=False), 0
        for row in connection.execute(f"SELECT * FROM {_sqlite_quote(table)} ORDER BY {order}"):
            table_digest.update(hashlib.md5(repr(row).encode(), usedforsecurity=False).hexdigest().encode())
            count += 1
        stats.row_counts[table] = count
        stats.checksums[table] = table_digest.hexdigest()
        report("snapshot", done, len(tables))
    return stats


def _restore_sqlite(local: Path) -> tuple[str, TableStats, float, float]:
    started = time.perf_counter()
    connection = sqlite3.connect(local)
    try:
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
        restore_seconds = time.perf_counter() - started
        if integrity != "ok":
            raise BackupError(f"restored SQLite backup fails PRAGMA integrity_check: {integrity}")
        started = time.perf_counter()
        stats = _sqlite_stats(connection, _noop)
    finally:
        connection.close()
    return "sqlite temp file (deleted)", stats, restore_seconds, time.perf_counter() - started


def _compare(info: BackupInfo, restored: TableStats) -> list[str]:
    mismatches = []
    for table in sorted(set(info.row_counts) | set(restored.row_counts)):
        if table not in restored.row_counts:
            mismatches.append(f"table {table} is missing from the restored copy")
        elif table not in info.row_counts:
            mismatches.append(f"table {table} is in the restored copy but not in the manifest")
        elif info.row_counts[table] != restored.row_counts[table]:
            mismatches.append(
                f"{table}: {restored.row_counts[table]} rows restored, manifest says {info.row_counts[table]}"
            )
        elif info.table_checksums.get(table) != restored.checksums[table]:
            mismatches.append(f"{table}: checksum {restored.checksums[table][:12]} differs from the manifest's")
    return mismatches


# --- PostgreSQL client tools ------------------------------------------------------------------------------------


def find_pg_tool(tool: str, server_major: int) -> str:
    """The pg_dump/pg_restore for this server major version: /usr/lib/postgresql/<major>/bin, else the newest
    installed one that is not older than the server, else the one on PATH."""
    exact = Path(f"/usr/lib/postgresql/{server_major}/bin/{tool}")
    if exact.is_file() and os.access(exact, os.X_OK):
        return str(exact)
    installed = []
    for candidate in glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"):
        version = Path(candidate).parts[-3]
        if version.isdigit() and int(version) >= server_major:
            installed.append((int(version), candidate))
    if installed:
        return sorted(installed)[0][1]
    on_path = shutil.which(tool)
    if on_path is None:
        raise BackupError(
            f"{tool} not found for PostgreSQL {server_major}: install postgresql-client-{server_major} "
            f"(looked in /usr/lib/postgresql/*/bin and PATH)"
        )
    return on_path


def _tool_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _runtime_versions() -> dict[str, str]:
    try:
        trader = metadata.version("gpt-trader-ops")
    except metadata.PackageNotFoundError:
        trader = "unknown"
    return {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "gpt-trader-ops": trader}


def _server_version(connection: Connection) -> tuple[int, str]:
    number = int(connection.exec_driver_sql("SHOW server_version_num").scalar_one())
    version = str(connection.exec_driver_sql("SHOW server_version").scalar_one()).split()[0]
    return number // 10000, version


def _sqlalchemy_url(url: URL) -> URL:
    return url.set(drivername="postgresql+psycopg2")


def _pg_connection_args(url: URL) -> list[str]:
    """Host, port, user and database on the command line; never the password (that goes in PGPASSWORD)."""
    args = []
    if url.host:
        args.append(f"--host={url.host}")
    if url.port:
        args.append(f"--port={url.port}")
    if url.username:
        args.append(f"--username={url.username}")
    args.append("--no-password")  # fail fast instead of prompting when no password is known
    args.append(f"--dbname={url.database}")
    return args


def _pg_env(url: URL) -> dict[str, str]:
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    for option in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
        value = url.query.get(option)
        if isinstance(value, str):
            env[f"PG{option.upper()}"] = value
    return env


@contextmanager
def _stderr_file(folder: Path) -> Iterator[Any]:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as handle:
        yield handle


def _tail(handle: Any, limit: int = 2000) -> str:
    handle.seek(0)
    text = handle.read().decode("utf-8", "replace").strip()
    return " | ".join(text[-limit:].splitlines()) or "no message"


# --- from settings ------------------------------------------------------------------------------------------------


def backup_manager_from_settings(settings: Settings) -> BackupManager:
    """The ledger at DATABASE_URL backed up to COLD_STORAGE_URL (no local fallback: a backup that cannot reach S3
    fails and is retried, it never counts as made), dumps staged under STATE_DIR/backups."""
    cold = cold_store_from_settings(settings, fallback=False)
    return BackupManager(settings.database_url, cold, workdir=settings.state_dir / "backups")
