"""The write journal: warm-tier writes made while the warm tier is down, durable on local disk until replayed.

One JSON line per set or delete, each with a sequence number, flushed and fsync'd before the write is
acknowledged. Beside the journal, `<path>.applied` holds the last sequence applied to the warm tier (written
atomically and fsync'd). Entries carry the absolute record (value, checksum, version, updated_at), so applying
a batch twice leaves the warm tier exactly as applying it once: a replay interrupted between the warm commit
and the marker update re-applies that batch harmlessly, and never an earlier one.

An entry written when the manager could not know the key's stored version is marked `rebase`; before applying
anything, replay resolves those versions against the warm tier and durably rewrites the journal with absolute
versions, so a re-run never resolves them twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from trader.fsio import atomic_write
from trader.state.base import StateRecord, StorageTier

Op = Literal["set", "delete"]


@dataclass(frozen=True)
class JournalEntry:
    """One journaled warm write: a set with its full record, or a delete."""

    seq: int
    op: Op
    key: str
    record: StateRecord | None = None  # set only
    rebase: bool = False  # version not known when journaled: replay adds the warm version to it

    def to_json(self) -> str:
        data: dict[str, Any] = {"seq": self.seq, "op": self.op, "key": self.key}
        if self.record is not None:
            data.update(
                value=self.record.value.decode("utf-8"),
                checksum=self.record.checksum,
                version=self.record.version,
                updated_at=self.record.updated_at.isoformat(),
            )
        if self.rebase:
            data["rebase"] = True
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> JournalEntry:
        data = json.loads(line)
        record = None
        if data["op"] == "set":
            record = StateRecord(
                key=data["key"],
                value=data["value"].encode("utf-8"),
                checksum=data["checksum"],
                version=int(data["version"]),
                updated_at=datetime.fromisoformat(data["updated_at"]),
            )
        return cls(seq=int(data["seq"]), op=data["op"], key=data["key"], record=record, rebase=bool(data.get("rebase")))


@dataclass
class ReplayResult:
    """What a replay applied: entries, the final record per key (None = deleted), and keys the tier refused."""

    applied_entries: int = 0
    last_seq: int = 0
    final: dict[str, StateRecord | None] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


class WriteJournal:
    """Append-only local journal of warm writes, replayed exactly once into the warm tier when it returns."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.marker = self.path.with_name(self.path.name + ".applied")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._repair_tail()
        entries = self._read_all()
        self._applied = self._read_marker()
        self._next_seq = max([self._applied, *(entry.seq for entry in entries)]) + 1

    # --- writing ---------------------------------------------------------------------------------------------

    def append(self, op: Op, key: str, record: StateRecord | None = None, *, rebase: bool = False) -> JournalEntry:
        """Journal one write durably (flush + fsync) and return it with its sequence number."""
        return self.append_many([(op, key, record, rebase)])[0]

    def append_many(self, writes: Iterable[tuple[Op, str, StateRecord | None, bool]]) -> list[JournalEntry]:
        """Journal several writes with one flush + fsync; all are durable when this returns."""
        with self._lock:
            entries = []
            for op, key, record, rebase in writes:
                if (op == "set") != (record is not None):
                    raise ValueError(f"journal {op} of {key!r}: a set needs its record and a delete has none")
                entries.append(JournalEntry(self._next_seq, op, key, record, rebase))
                self._next_seq += 1
            if not entries:
                return entries
            with self.path.open("a", encoding="utf-8") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # another process's tail repair never sees half a line of ours
                handle.write("".join(entry.to_json() + "\n" for entry in entries))
                handle.flush()
                os.fsync(handle.fileno())
            return entries

    # --- reading ---------------------------------------------------------------------------------------------

    def pending(self) -> list[JournalEntry]:
        """Entries not yet applied to the warm tier, in sequence order."""
        with self._lock:
            applied = self._read_marker()
            return [entry for entry in self._read_all() if entry.seq > applied]

    def depth(self) -> int:
        return len(self.pending())

    @property
    def last_applied(self) -> int:
        return self._read_marker()

    # --- replay ----------------------------------------------------------------------------------------------

    def replay(self, tier: StorageTier, batch_size: int = 1000) -> ReplayResult:
        """Apply pending entries to tier in order, batch by batch, recording progress; compact when all applied.

        Raises TierUnavailable (progress so far is kept) if the tier goes away; run it again to finish.
        """
        with self._lock:
            result = ReplayResult(last_seq=self._read_marker())
            entries = self._resolve_rebases(tier, self.pending())
            for start in range(0, len(entries), batch_size):
                chunk = entries[start : start + batch_size]
                net: dict[str, StateRecord | None] = {}
                for entry in chunk:
                    net[entry.key] = entry.record if entry.op == "set" else None
                puts = [record for record in net.values() if record is not None]
                deletes = [key for key, record in net.items() if record is None]
                if puts:
                    stored = tier.put_many(puts)
                    result.failed.update(stored.failed)
                if deletes:
                    removed = tier.delete_many(deletes)
                    result.failed.update(removed.failed)
                self._write_marker(chunk[-1].seq)
                result.applied_entries += len(chunk)
                result.last_seq = chunk[-1].seq
                result.final.update({key: record for key, record in net.items() if key not in result.failed})
            if not self.pending():
                self.compact()
            return result

    def _resolve_rebases(self, tier: StorageTier, entries: list[JournalEntry]) -> list[JournalEntry]:
        """Give rebase entries absolute versions from the tier and rewrite the journal before applying anything."""
        if not any(entry.rebase for entry in entries):
            return entries
        keys = list(dict.fromkeys(entry.key for entry in entries if entry.rebase))
        stored = tier.get_many(keys)
        offset: dict[str, int] = {key: record.version for key, record in stored.items()}
        resolved: list[JournalEntry] = []
        rebasing: set[str] = set()
        for entry in entries:
            if entry.op == "delete":
                rebasing.discard(entry.key)  # versions after a delete start again at 1
                resolved.append(entry)
                continue
            if entry.rebase:
                rebasing.add(entry.key)
            if entry.key in rebasing and entry.record is not None:
                bumped = replace(entry.record, version=entry.record.version + offset.get(entry.key, 0))
                resolved.append(replace(entry, record=bumped, rebase=False))
            else:
                resolved.append(entry)
        self._rewrite(resolved)
        return resolved

    def compact(self) -> None:
        """Drop applied entries from the journal file (the marker keeps the sequence numbering going)."""
        with self._lock:
            self._rewrite(self.pending())

    # --- files -----------------------------------------------------------------------------------------------

    def _read_all(self) -> list[JournalEntry]:
        if not self.path.exists():
            return []
        entries = []
        with self.path.open("r", encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n"):
                    entries.append(JournalEntry.from_json(line))
        return entries

    def _repair_tail(self) -> None:
        """Cut a torn last line (a crash mid-append): its write was never acknowledged."""
        if not self.path.exists():
            return
        with self.path.open("r+b") as handle:
            # Under the appenders' lock: a process that opens the journal beside a live writer (a second bot before
            # it is refused its lease) must not mistake that writer's line in progress for a torn one.
            fcntl.flock(handle, fcntl.LOCK_EX)
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
                handle.flush()
                os.fsync(handle.fileno())

    def _rewrite(self, entries: Sequence[JournalEntry]) -> None:
        atomic_write(self.path, "".join(entry.to_json() + "\n" for entry in entries).encode("utf-8"), mode=0o644)

    def _read_marker(self) -> int:
        try:
            return int(self.marker.read_text(encoding="ascii").strip() or 0)
        except FileNotFoundError:
            return 0

    def _write_marker(self, seq: int) -> None:
        atomic_write(self.marker, f"{seq}\n".encode("ascii"), mode=0o644)
