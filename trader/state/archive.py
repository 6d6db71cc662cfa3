"""The StateManager's COLD tier for keys: move keys out of the hot and warm tiers into one immutable object in
the cold store (a folder or S3), and bring them back.

An archive is gzip'd JSON lines, one StateRecord per line (key, value as text, checksum, version, updated_at),
plus a manifest with the key count and the sha256 of the stored bytes. `archive()` deletes the keys from the
warm and hot tiers only after the object was written AND read back with a matching sha256, so a failed upload
never loses a key. `restore()` verifies the sha256 and every record's checksum before writing anything back.

Archives are named `state/archive/<name>` in the store it is given: StateManager.from_settings gives it the
account's view (trader/state/cold.py AccountObjectStore), so they sit under `accounts/<account>/state/archive/`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from trader.errors import TraderError
from trader.state.base import BatchResult, ObjectStore, StateRecord, decode_value
from trader.state.cold import AccountObjectStore, FallbackObjectStore

log = logging.getLogger(__name__)
PREFIX = "state/archive/"


class ArchiveCorrupt(TraderError):
    """An archive object does not match its manifest (sha256, size or a record's checksum)."""


@dataclass(frozen=True)
class ArchiveInfo:
    name: str
    pattern: str
    keys: int
    sha256: str
    size_bytes: int
    created_at: str
    uri: str = ""
    duration_ms: float = 0.0


class KeyStore(Protocol):
    """The keys an archive moves: what it needs of the StateManager (which satisfies it), and nothing more."""

    def get_keys_by_pattern(self, pattern: str = "*") -> list[str]: ...

    def batch_get_records(self, keys: Iterable[str]) -> dict[str, StateRecord]: ...

    def batch_set(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> BatchResult: ...

    def batch_delete(self, keys: Iterable[str]) -> BatchResult: ...


class ColdArchive:
    """Archive keys matching a pattern to the cold store and restore them; see the module docstring."""

    def __init__(self, manager: KeyStore, cold: ObjectStore) -> None:
        self.manager = manager
        self.cold = cold

    def on_recovery(self, listener: Callable[[str, float], None]) -> None:
        """Call `listener("s3", seconds)` when the cold store comes back after an outage (a store with a local
        fallback; a plain folder or S3 store has no recovery to report)."""
        if isinstance(self.cold, FallbackObjectStore | AccountObjectStore):
            self.cold.on_recovery(listener)

    def archive(self, pattern: str, *, name: str | None = None) -> ArchiveInfo | None:
        """Move the keys matching `pattern` to one cold object; None when nothing matches."""
        started = time.perf_counter()
        keys = self.manager.get_keys_by_pattern(pattern)
        if not keys:
            return None
        records = self.manager.batch_get_records(keys)
        created = datetime.now(UTC)
        name = name or f"{created:%Y%m%dT%H%M%S%fZ}"
        payload = gzip.compress(b"".join(_line(records[k]) for k in sorted(records)), mtime=0)
        digest = hashlib.sha256(payload).hexdigest()
        uri = self.cold.put(f"{PREFIX}{name}.jsonl.gz", payload)
        if hashlib.sha256(self.cold.get(f"{PREFIX}{name}.jsonl.gz")).hexdigest() != digest:
            raise ArchiveCorrupt(f"archive {name}: the cold copy does not read back intact; nothing was deleted")
        info = ArchiveInfo(name, pattern, len(records), digest, len(payload), created.isoformat(), uri)
        manifest = {k: v for k, v in info.__dict__.items() if k != "duration_ms"}
        self.cold.put(f"{PREFIX}{name}.manifest.json", json.dumps(manifest, sort_keys=True).encode())
        removed = self.manager.batch_delete(list(records))
        if removed.failed:
            log.warning("archive %s: %d keys could not be deleted from the warm tier", name, len(removed.failed))
        elapsed = (time.perf_counter() - started) * 1000
        log.info("Archived %d keys matching %r to cold storage %s in %.1f ms", len(records), pattern, uri, elapsed)
        return ArchiveInfo(**manifest, duration_ms=elapsed)

    def list(self) -> list[ArchiveInfo]:
        """Archives in the cold store, newest first."""
        names = [n for n in self.cold.list(PREFIX) if n.endswith(".manifest.json")]
        infos = [ArchiveInfo(**json.loads(self.cold.get(n))) for n in names]
        return sorted(infos, key=lambda i: i.created_at, reverse=True)

    def restore(self, name: str) -> int:
        """Verify the archive and write its keys back (warm first, then hot); returns how many."""
        started = time.perf_counter()
        manifest = json.loads(self.cold.get(f"{PREFIX}{name}.manifest.json"))
        payload = self.cold.get(f"{PREFIX}{name}.jsonl.gz")
        digest = hashlib.sha256(payload).hexdigest()
        if digest != manifest["sha256"] or len(payload) != manifest["size_bytes"]:
            raise ArchiveCorrupt(
                f"archive {name} is corrupt (sha256 {digest[:12]}… != {manifest['sha256'][:12]}…, "
                f"{len(payload)} of {manifest['size_bytes']} bytes); nothing was restored"
            )
        records = [_record(line) for line in gzip.decompress(payload).splitlines() if line]
        broken = [r.key for r in records if not r.intact]
        if broken or len(records) != manifest["keys"]:
            raise ArchiveCorrupt(f"archive {name}: {len(broken)} record(s) fail their checksum; nothing was restored")
        result = self.manager.batch_set({r.key: decode_value(r.value) for r in records})
        elapsed = (time.perf_counter() - started) * 1000
        log.info("Restored %d keys from cold archive %s in %.1f ms", len(result.stored), name, elapsed)
        return len(result.stored)


def _line(record: StateRecord) -> bytes:
    entry: dict[str, Any] = {
        "key": record.key,
        "value": record.value.decode("utf-8"),
        "checksum": record.checksum,
        "version": record.version,
        "updated_at": record.updated_at.isoformat(),
    }
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _record(line: bytes) -> StateRecord:
    entry = json.loads(line)
    return StateRecord(
        key=entry["key"],
        value=entry["value"].encode("utf-8"),
        checksum=entry["checksum"],
        version=int(entry["version"]),
        updated_at=datetime.fromisoformat(entry["updated_at"]),
    )
