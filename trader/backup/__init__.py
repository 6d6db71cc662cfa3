"""Verified backups of the ledger database to the cold tier, their retention, and restore tests."""

from __future__ import annotations

from trader.backup.backup import (
    KEEP_DAILY,
    KEEP_MONTHLY,
    KINDS,
    BackupError,
    BackupInfo,
    BackupKind,
    BackupManager,
    BackupVerificationFailed,
    LocalDump,
    NoVerifiedBackup,
    Progress,
    RestoreReport,
    backup_manager_from_settings,
)

__all__ = [
    "KEEP_DAILY",
    "KEEP_MONTHLY",
    "KINDS",
    "BackupError",
    "BackupInfo",
    "BackupKind",
    "BackupManager",
    "BackupVerificationFailed",
    "LocalDump",
    "NoVerifiedBackup",
    "Progress",
    "RestoreReport",
    "backup_manager_from_settings",
]
