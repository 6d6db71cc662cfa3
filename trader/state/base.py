"""The tiers' shared vocabulary: records with checksum and version, batch results, and the tier protocols.

Values are JSON-able Python objects; a tier stores them as canonical JSON bytes (sorted keys, no spaces), so
the same value always has the same bytes and the same sha256 in every tier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trader.account_names import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from trader.settings import Settings


def encode_value(value: Any) -> bytes:
    """Canonical JSON bytes of a value (Decimals and datetimes must be converted by the caller)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_value(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StateRecord:
    """One key as every tier keeps it."""

    key: str
    value: bytes  # canonical JSON
    checksum: str  # sha256 hex of value
    version: int  # 1 on first write, +1 on every write of the key
    updated_at: datetime  # aware UTC

    @property
    def intact(self) -> bool:
        return checksum(self.value) == self.checksum

    def decoded(self) -> Any:
        return decode_value(self.value)


@dataclass
class BatchResult:
    """What a batch write or delete did: the keys the tier accepted, and the ones it refused with the reason."""

    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


class TierUnavailable(Exception):
    """A tier could not be reached (connection refused, timeout); the manager falls back and recovers later."""


class StorageTier(Protocol):
    """WARM and HOT tiers: keyed records with batch operations. Raise TierUnavailable when unreachable."""

    name: str

    def get_many(self, keys: Sequence[str]) -> dict[str, StateRecord]: ...

    def put_many(self, records: Sequence[StateRecord]) -> BatchResult: ...

    def delete_many(self, keys: Sequence[str]) -> BatchResult: ...

    def keys(self, pattern: str = "*") -> list[str]:
        """Keys matching a glob pattern (Redis MATCH semantics: *, ?, [..])."""
        ...

    def ping(self) -> bool:
        """True when the tier answers right now; never raises."""
        ...


class ObjectStore(Protocol):
    """COLD tier: named immutable objects (checkpoints, backups, archived logs, state exports)."""

    name: str

    def put(self, name: str, data: bytes) -> str:
        """Store data under name (atomically: readers see all of it or nothing); returns its URI."""
        ...

    def get(self, name: str) -> bytes: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, name: str) -> None: ...

    def ping(self) -> bool: ...


def account_state_dir(settings: Settings) -> Path:
    """The folder of the account's local state files (write journal, cold fallback): STATE_DIR itself for the
    default account, where its files were before accounts (a journal left pending by an upgrade is still
    replayed), STATE_DIR/accounts/<account> for any other."""
    folder = settings.state_dir
    # A declared account's settings already have their own folder (trader/accounts.py settings_for): not nested again.
    if settings.account == DEFAULT_ACCOUNT or folder.parts[-2:] == ("accounts", settings.account):
        return folder
    return folder / "accounts" / settings.account
