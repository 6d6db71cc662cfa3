"""Backups of the ledger to the cold tier: verified before they count, restore-tested, kept 30 daily / 12 monthly."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.backup.conftest import MotoS3, fill_ledger
from trader.backup import BackupManager, BackupVerificationFailed, NoVerifiedBackup
from trader.backup.engines import find_pg_tool
from trader.state.base import ObjectStore
from trader.state.cold import (
    CHUNK_SIZE,
    FileDigest,
    LocalFolderStore,
    ObjectNotFound,
    S3Store,
    StreamingObjectStore,
    TransferProgress,
)

AT = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)


def manager(url: str, cold: StreamingObjectStore, tmp_path: Path) -> BackupManager:
    return BackupManager(url, cold, workdir=tmp_path / "work")


def flip_a_byte(cold: ObjectStore, name: str) -> None:
    """Corrupt the stored object in place (not through the manager): one byte in the middle changes."""
    data = bytearray(cold.get(name))
    data[len(data) // 2] ^= 0xFF
    cold.put(name, bytes(data))


class CorruptingStore:
    """A cold store that silently damages every dump it stores (a bad disk, a broken proxy)."""

    def __init__(self, inner: StreamingObjectStore) -> None:
        self.inner = inner
        self.name = inner.name

    def put(self, name: str, data: bytes) -> str:
        if not name.endswith(".json"):
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        return self.inner.put(name, data)

    def put_file(
        self, name: str, path: Path, *, chunk_size: int = CHUNK_SIZE, on_progress: TransferProgress | None = None
    ) -> str:
        uri = self.put(name, path.read_bytes())
        if on_progress is not None:
            on_progress(path.stat().st_size, path.stat().st_size)
        return uri

    def get_file(
        self, name: str, path: Path, *, chunk_size: int = CHUNK_SIZE, on_progress: TransferProgress | None = None
    ) -> FileDigest:
        return self.inner.get_file(name, path, chunk_size=chunk_size, on_progress=on_progress)

    def digest(
        self, name: str, *, chunk_size: int = CHUNK_SIZE, on_progress: TransferProgress | None = None
    ) -> FileDigest:
        return self.inner.digest(name, chunk_size=chunk_size, on_progress=on_progress)

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def ping(self) -> bool:
        return self.inner.ping()


# --- backup and restore test on each engine and cold tier ---------------------------------------------------------


def test_postgres_backup_is_verified_and_restores_to_the_same_rows(
    pg_ledger: tuple[str, dict[str, int]], cold: StreamingObjectStore, tmp_path: Path
) -> None:
    url, counts = pg_ledger
    backups = manager(url, cold, tmp_path)

    info = backups.create("daily", at=AT)
    report = backups.restore_test()

    assert info.verified and info.name == "backups/daily/20261121T030000Z.dump"
    assert {k: v for k, v in info.row_counts.items() if k != "alembic_version"} == counts
    assert info.row_counts["fills"] == 50
    assert report.ok, report.mismatches
    assert report.restored_counts == info.row_counts
    assert "dropped" in report.restored_into
    assert backups.list() == [info]


def test_sqlite_backup_is_verified_and_restores_to_the_same_rows(
    sqlite_ledger: tuple[str, dict[str, int]], cold: StreamingObjectStore, tmp_path: Path
) -> None:
    url, counts = sqlite_ledger
    backups = manager(url, cold, tmp_path)

    info = backups.create("full", at=AT)
    report = backups.restore_test()

    assert info.verified and info.name == "backups/full/20261121T030000Z.sqlite"
    assert {k: v for k, v in info.row_counts.items() if k != "alembic_version"} == counts
    assert report.ok, report.mismatches
    assert report.restored_counts == info.row_counts


def test_manifest_is_written_last_with_checksums_counts_and_tool_versions(
    pg_ledger: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    url, _ = pg_ledger
    cold = LocalFolderStore(tmp_path / "cold")
    stages: list[str] = []
    writes: list[str] = []
    original_put, original_put_file = cold.put, cold.put_file

    def recording_put(name: str, data: bytes) -> str:
        writes.append(name)
        return original_put(name, data)

    def recording_put_file(name: str, path: Path, **kwargs: Any) -> str:
        writes.append(name)
        return original_put_file(name, path, **kwargs)

    cold.put = recording_put  # type: ignore[method-assign]
    cold.put_file = recording_put_file  # type: ignore[method-assign]

    info = manager(url, cold, tmp_path).create(
        "daily", progress=lambda stage, _done, _total: stages.append(stage), at=AT
    )

    manifest = json.loads(cold.get(info.manifest_name))
    assert manifest["verified"] is True and manifest["sha256"] == info.sha256
    assert manifest["size_bytes"] == len(cold.get(info.name))
    assert set(manifest["row_counts"]) == set(manifest["table_checksums"]) >= {"fills", "orders", "checkpoints"}
    assert manifest["tools"]["pg_dump"].startswith("pg_dump (PostgreSQL)")
    assert manifest["created_at"] == AT.isoformat()
    assert writes == [info.name, info.manifest_name]
    assert {"snapshot", "dump", "upload", "verify"} <= set(stages)
    assert not list((tmp_path / "work").glob("*.dump"))  # the staged dump is removed once verified


def test_s3_upload_goes_in_chunks_with_progress(
    sqlite_ledger: tuple[str, dict[str, int]], moto_s3: MotoS3, tmp_path: Path
) -> None:
    url, _ = sqlite_ledger
    cold = S3Store(moto_s3.url(), endpoint_url=moto_s3.endpoint)
    backups = BackupManager(url, cold, workdir=tmp_path / "work", chunk_size=5 * 2**20)
    dump = backups.dump("daily", at=AT)
    padded = dump.path.read_bytes() + bytes(11 * 2**20)  # a dump of three 5 MiB parts
    dump.path.write_bytes(padded)
    dump.sha256, dump.size_bytes = hashlib.sha256(padded).hexdigest(), len(padded)
    uploaded: list[int] = []

    backups.upload(dump, progress=lambda stage, done, _total: uploaded.append(done) if stage == "upload" else None)
    info = backups.verify(dump)

    assert uploaded[0] == 0 and uploaded[-1] == dump.size_bytes and len(uploaded) == 4  # start + three parts
    assert info.verified
    assert moto_s3.keys() == [f"gpt-trader/cold/{info.manifest_name}", f"gpt-trader/cold/{info.name}"]


# --- never complete unless verified --------------------------------------------------------------------------------


def test_a_byte_flipped_in_the_stored_dump_is_refused_and_never_listed(
    pg_ledger: tuple[str, dict[str, int]], cold: StreamingObjectStore, tmp_path: Path
) -> None:
    url, _ = pg_ledger
    backups = manager(url, cold, tmp_path)
    dump = backups.dump("daily", at=AT)
    backups.upload(dump)
    flip_a_byte(cold, dump.name)

    with pytest.raises(BackupVerificationFailed, match="does not match"):
        backups.verify(dump)

    assert backups.list() == [] and backups.latest() is None and backups.backup_age() is None
    assert cold.list("backups/") == []  # the damaged dump is deleted, and no manifest was written
    with pytest.raises(ObjectNotFound):
        cold.get(dump.manifest_name)


def test_a_store_that_damages_uploads_never_yields_a_complete_backup(
    sqlite_ledger: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    url, _ = sqlite_ledger
    inner = LocalFolderStore(tmp_path / "cold")
    backups = manager(url, CorruptingStore(inner), tmp_path)

    with pytest.raises(BackupVerificationFailed):
        backups.create("daily", at=AT)

    assert backups.list() == []
    assert not [name for name in inner.list() if name.endswith(".manifest.json")]
    with pytest.raises(NoVerifiedBackup):
        backups.restore_test()


def test_restore_test_fails_when_the_stored_dump_was_damaged_after_verification(
    sqlite_ledger: tuple[str, dict[str, int]], cold: StreamingObjectStore, tmp_path: Path
) -> None:
    url, _ = sqlite_ledger
    backups = manager(url, cold, tmp_path)
    info = backups.create("daily", at=AT)
    flip_a_byte(cold, info.name)

    report = backups.restore_test()

    assert not report.ok
    assert "corrupt" in report.mismatches[0]


def test_restore_test_reports_tables_whose_rows_differ_from_the_manifest(
    pg_ledger: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    url, _ = pg_ledger
    cold = LocalFolderStore(tmp_path / "cold")
    backups = manager(url, cold, tmp_path)
    info = backups.create("daily", at=AT)
    manifest = json.loads(cold.get(info.manifest_name))
    manifest["row_counts"]["fills"] += 1
    manifest["table_checksums"]["orders"] = "0" * 32
    cold.put(info.manifest_name, json.dumps(manifest).encode())

    report = backups.restore_test()

    assert not report.ok
    assert report.mismatches == [
        "fills: 50 rows restored, manifest says 51",
        f"orders: checksum {info.table_checksums['orders'][:12]} differs from the manifest's",
    ]


# --- PostgreSQL details ----------------------------------------------------------------------------------------------


def test_pg_dump_gets_the_password_from_the_environment_never_the_command_line(
    pg_ledger: tuple[str, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    url, _ = pg_ledger
    with_password = make_url(url).set(password="s3cret-Pa55").render_as_string(hide_password=False)
    calls: list[tuple[list[str], dict[str, str]]] = []
    real_popen = subprocess.Popen

    def recording_popen(args: list[str], **kwargs: Any) -> Any:
        calls.append((list(args), dict(kwargs.get("env") or {})))
        return real_popen(args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    caplog.set_level(logging.DEBUG)
    cold = LocalFolderStore(tmp_path / "cold")

    info = manager(with_password, cold, tmp_path).create("daily", at=AT)

    dumps = [(args, env) for args, env in calls if Path(args[0]).name == "pg_dump"]
    assert dumps, calls
    args, env = dumps[0]
    assert env["PGPASSWORD"] == "s3cret-Pa55"
    assert not any("s3cret" in arg for arg in args)
    assert "s3cret" not in caplog.text
    assert "s3cret" not in cold.get(info.manifest_name).decode()


def test_pg_tools_match_the_server_major_version() -> None:
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))
    assert installed, "no PostgreSQL client tools under /usr/lib/postgresql"
    major = int(installed[-1].parts[-3])

    assert find_pg_tool("pg_dump", major) == str(installed[-1])
    assert find_pg_tool("pg_restore", major) == str(installed[-1].with_name("pg_restore"))


# --- retention, latest, age ------------------------------------------------------------------------------------------


def test_retention_keeps_30_daily_and_12_monthly_counting_full_as_monthly(
    sqlite_ledger: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    url, _ = sqlite_ledger
    cold = LocalFolderStore(tmp_path / "cold")
    backups = manager(url, cold, tmp_path)
    dailies = [backups.create("daily", at=AT - timedelta(days=d)) for d in range(35)]
    monthlies = [backups.create("monthly", at=AT - timedelta(days=30 * m + 1)) for m in range(10)]
    fulls = [backups.create("full", at=AT - timedelta(days=30 * m + 2)) for m in range(5)]

    deleted = backups.prune(now=AT)

    kept = backups.list()
    assert [b.name for b in kept if b.kind == "daily"] == sorted(b.name for b in dailies[:30])
    monthly_pool = sorted(monthlies + fulls, key=lambda b: b.created_at)
    assert [b.name for b in kept if b.kind != "daily"] == [b.name for b in monthly_pool[-12:]]
    expired = dailies[30:] + monthly_pool[:-12]
    assert sorted(deleted) == sorted([b.name for b in expired] + [b.manifest_name for b in expired])
    assert len(cold.list("backups/")) == 2 * (30 + 12)


def test_prune_deletes_unverified_leftovers_only_after_a_day(
    sqlite_ledger: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    url, _ = sqlite_ledger
    cold = LocalFolderStore(tmp_path / "cold")
    backups = manager(url, cold, tmp_path)
    old = backups.dump("daily", at=AT - timedelta(days=2))
    backups.upload(old)
    recent = backups.dump("daily", at=AT - timedelta(hours=2))
    backups.upload(recent)  # perhaps still being verified by another run

    deleted = backups.prune(now=AT)

    assert deleted == [old.name]
    assert cold.list("backups/") == [recent.name]


def test_latest_and_backup_age_follow_the_newest_verified_backup(
    sqlite_ledger: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    url, _ = sqlite_ledger
    backups = manager(url, LocalFolderStore(tmp_path / "cold"), tmp_path)
    backups.create("full", at=AT - timedelta(days=3))
    newest = backups.create("daily", at=AT - timedelta(hours=20))

    assert backups.latest() == newest
    assert backups.latest("full") is not None and backups.latest("monthly") is None
    assert backups.backup_age(now=AT) == timedelta(hours=20)


def test_restore_test_without_any_backup_says_to_run_one(sqlite_url: str, tmp_path: Path) -> None:
    backups = manager(sqlite_url, LocalFolderStore(tmp_path / "cold"), tmp_path)

    with pytest.raises(NoVerifiedBackup, match="run daily-backup"):
        backups.restore_test()


def test_counts_and_dump_share_one_snapshot_while_the_bot_keeps_writing(
    pg_ledger: tuple[str, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, counts = pg_ledger
    from trader.backup import engines as module

    count_tables = module._postgres_stats

    def bot_writes_first(connection: Any, report: Any) -> Any:
        fill_ledger(url, fills=7, first=1000)  # committed after the snapshot was exported, before the counting starts
        return count_tables(connection, report)

    monkeypatch.setattr(module, "_postgres_stats", bot_writes_first)
    backups = manager(url, LocalFolderStore(tmp_path / "cold"), tmp_path)

    info = backups.create("daily", at=AT)
    report = backups.restore_test()

    assert fill_ledger(url, fills=0)["fills"] == counts["fills"] + 7
    assert info.row_counts["fills"] == counts["fills"]  # the 7 new fills are after the snapshot
    assert report.ok, report.mismatches  # and the dump agrees: it is the same snapshot
