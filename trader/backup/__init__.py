"""Verified backups of the ledger database to the cold tier, their retention, and restore tests.

models.py: what a backup is (names, manifest, errors, restore report); manager.py: BackupManager (dump, upload and
verify, retention, restore test); engines.py: the PostgreSQL and SQLite dump/restore with same-snapshot checksums.
"""

from __future__ import annotations

from trader.backup.manager import BackupManager, backup_manager_from_settings
from trader.backup.models import (
    KEEP_DAILY,
    KEEP_MONTHLY,
    KINDS,
    BackupError,
    BackupInfo,
    BackupKind,
    BackupVerificationFailed,
    LocalDump,
    NoVerifiedBackup,
    Progress,
    RestoreReport,
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
