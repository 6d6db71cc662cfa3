"""What a backup is: its object names, its manifest, the errors of the backup area, and what a restore test found.

Invariant: a `BackupInfo` read from a manifest counts as a backup only with `verified: true`, which the manager
writes only after the uploaded dump was read back and its sha256 matched; `compare_with_manifest` is the one rule
by which a restored copy agrees with its manifest (same tables, same row counts, same per-table checksums, and for
every account the same rows in each of ACCOUNT_TABLES).

A backup is the whole database, every account's rows: a dump cannot be split by account. Its manifest records each
account's rows of ACCOUNT_TABLES, counted in the dump's own snapshot, so a restore test proves every account whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

from trader.errors import TraderError

BackupKind = Literal["daily", "monthly", "full"]
KINDS: tuple[str, ...] = get_args(BackupKind)
Engine = Literal["postgresql", "sqlite"]
# progress(stage, done, total): tables counted, SQLite pages copied, bytes uploaded or read back.
Progress = Callable[[str, int, int], None]

PREFIX = "backups"
KEEP_DAILY = 30
KEEP_MONTHLY = 12  # full backups count as monthly
ORPHAN_GRACE = timedelta(days=1)  # a dump without a verified manifest this old is a failed run's leftover
MANIFEST_VERSION = 2  # 2: account_row_counts
# The tables whose rows a manifest counts per account (an operator's "is my account's history in this backup").
ACCOUNT_TABLES = ("orders", "fills", "positions", "checkpoints")
# account -> table -> rows
AccountCounts = dict[str, dict[str, int]]
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
CHECKSUM_METHOD = "md5 over each row's md5 in primary-key order (PostgreSQL: row::text; SQLite: repr of the row)"
_NAME = re.compile(r"^backups/(daily|monthly|full)/(\d{8}T\d{6}Z)\.(dump|sqlite|manifest\.json)$")


class BackupError(TraderError):
    """A backup or restore test could not be made; the message says which step and why."""


class BackupVerificationFailed(BackupError):
    """The object read back from the cold tier is not the dump that was uploaded; it was deleted."""


class NoVerifiedBackup(BackupError):
    """The cold tier holds no verified backup to restore."""


def no_progress(_stage: str, _done: int, _total: int) -> None:
    """A progress callback that ignores every report."""


@dataclass
class TableStats:
    """Rows and checksum per table, taken in one snapshot."""

    row_counts: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    account_counts: AccountCounts = field(default_factory=dict)  # ACCOUNT_TABLES' rows per account

    def add_account_counts(self, table: str, counts: Iterable[tuple[str, int]]) -> None:
        """Record one table's (account, rows) pairs; every account seen gets every table of ACCOUNT_TABLES."""
        for account, rows in counts:
            self.account_counts.setdefault(account, dict.fromkeys(ACCOUNT_TABLES, 0))[table] = int(rows)


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
class Restored:
    """A dump restored by a database engine: where it went, what it holds, and how long restoring and counting took."""

    restored_into: str
    stats: TableStats
    restore_seconds: float
    compare_seconds: float


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
    account_row_counts: AccountCounts = field(default_factory=dict)  # empty in manifests older than version 2

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
            account_row_counts={
                account: {table: int(rows) for table, rows in tables.items()}
                for account, tables in data.get("account_row_counts", {}).items()
            },
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
    expected_account_counts: AccountCounts = field(default_factory=dict)
    restored_account_counts: AccountCounts = field(default_factory=dict)

    def summary(self) -> str:
        rows = sum(self.restored_counts.values())
        if self.ok:
            accounts = f" and {len(self.restored_account_counts)} accounts" if self.expected_account_counts else ""
            return (
                f"Restore test passed: {self.backup} restored {rows} rows in {len(self.restored_counts)} tables"
                f"{accounts}, counts and checksums match the manifest"
            )
        return f"Restore test FAILED for {self.backup}: " + "; ".join(self.mismatches)


def backup_names(kind: str, created_at: datetime, engine: str) -> tuple[str, str]:
    """The dump's and the manifest's object names for a backup of this kind taken at created_at."""
    if kind not in KINDS:
        raise BackupError(f"backup kind {kind!r} is not allowed: use one of {', '.join(KINDS)}")
    stamp = created_at.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    suffix = "dump" if engine == "postgresql" else "sqlite"
    return f"{PREFIX}/{kind}/{stamp}.{suffix}", f"{PREFIX}/{kind}/{stamp}.manifest.json"


def stamp_of(name: str) -> datetime | None:
    """When the backup object `name` was taken, or None when the name is not a backup object's."""
    match = _NAME.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(2), TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def compare_with_manifest(info: BackupInfo, restored: TableStats) -> list[str]:
    """Every difference between a restored copy and its manifest, one message per table; empty when they agree."""
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
    if info.account_row_counts:  # a manifest from before accounts has none to compare
        mismatches += _account_mismatches(info.account_row_counts, restored.account_counts)
    return mismatches


def _account_mismatches(expected: AccountCounts, restored: AccountCounts) -> list[str]:
    mismatches = []
    for account in sorted(set(expected) | set(restored)):
        for table in ACCOUNT_TABLES:
            want = expected.get(account, {}).get(table, 0)
            got = restored.get(account, {}).get(table, 0)
            if want != got:
                mismatches.append(f"account {account}: {table}: {got} rows restored, manifest says {want}")
    return mismatches
