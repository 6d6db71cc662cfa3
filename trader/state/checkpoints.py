"""Checkpoints: a consistent snapshot of bot state (positions, open orders, balances, strategy state, guard
counters) kept in the warm tier (the `checkpoints` table) and copied to the cold tier, verified on restore.

Stored bytes are the snapshot as canonical JSON (sorted keys, no spaces), gzip-compressed (mtime 0, so the same
snapshot gives the same bytes) when compression is on; `sha256` and `size_bytes` cover the stored bytes. The cold
tier holds `accounts/<account>/checkpoints/<id>.json.gz` (or `.json`) and `<id>.manifest.json` beside it (the row
without the payload), so a checkpoint can be identified from the cold tier alone.

Invariant: a CheckpointStore is one account's: its Ledger reads, prunes and writes only that account's rows, and
its cold copies go under that account's prefix, so no id of another account is ever listed, read, restored or
pruned. A row keeps the cold copy's full name (cold_key): copies written before accounts (`checkpoints/<id>…` at
the store's root, rows of the default account) still restore.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from trader.account_names import DEFAULT_ACCOUNT
from trader.errors import TraderError
from trader.ledger import Checkpoint, Ledger, OrderRecord
from trader.state.base import ObjectStore, TierUnavailable
from trader.state.cold import ColdStorageError, account_store, cold_store_from_settings

if TYPE_CHECKING:
    from trader.brokers.base import Broker
    from trader.settings import Settings

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
Source = Literal["warm", "cold"]


class CheckpointError(TraderError):
    """A checkpoint could not be created or restored; the message says why and what to do."""


class CheckpointNotFound(CheckpointError):
    """No checkpoint with that id."""


class CheckpointCorrupt(CheckpointError):
    """Neither copy of the checkpoint verifies (sha256, size, gzip, JSON); the message names the newest good one."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint without its payload; create() also fills how long it took."""

    id: str
    created_at: datetime
    session_id: str | None
    reason: str
    compressed: bool
    size_bytes: int
    sha256: str
    cold_key: str | None
    duration_ms: float | None = None

    @classmethod
    def of(cls, row: Checkpoint, duration_ms: float | None = None) -> CheckpointInfo:
        return cls(
            id=row.id,
            created_at=row.created_at,
            session_id=row.session_id,
            reason=row.reason,
            compressed=row.compressed,
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            cold_key=row.cold_key,
            duration_ms=duration_ms,
        )

    def manifest(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "session_id": self.session_id,
            "reason": self.reason,
            "compressed": self.compressed,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "payload": self.cold_key,
            "format": SNAPSHOT_FORMAT,
        }


@dataclass(frozen=True)
class RestoredCheckpoint:
    """What restore_checkpoint() verified and read, and from which copy."""

    info: CheckpointInfo
    snapshot: dict[str, Any]
    source: Source
    duration_ms: float
    notes: list[str] = field(default_factory=list)


# --- serialization ----------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def encode_snapshot(snapshot: dict[str, Any], *, compress: bool) -> bytes:
    """Canonical JSON (Decimals and datetimes as strings), gzip-compressed with mtime 0 when compress."""
    try:
        raw = json.dumps(
            snapshot, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_jsonable
        ).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"snapshot cannot be stored as JSON: {error}") from None
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def verify_payload(payload: bytes, *, sha256: str, size_bytes: int, compressed: bool) -> dict[str, Any]:
    """The snapshot in payload, or CheckpointCorrupt saying what is wrong (without the newest-good hint)."""
    if len(payload) != size_bytes:
        kind = "truncated" if len(payload) < size_bytes else "oversized"
        raise CheckpointCorrupt(f"{kind}: {len(payload)} of {size_bytes} bytes")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != sha256:
        raise CheckpointCorrupt(f"sha256 mismatch: stored {sha256[:12]}…, computed {actual[:12]}…")
    try:
        raw = gzip.decompress(payload) if compressed else payload
        snapshot = json.loads(raw.decode("utf-8"))
    except (OSError, EOFError, zlib.error) as error:
        raise CheckpointCorrupt(f"gzip data is damaged: {error}") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointCorrupt(f"payload is not JSON: {error}") from None
    if not isinstance(snapshot, dict):
        raise CheckpointCorrupt(f"payload is JSON {type(snapshot).__name__}, not an object")
    return snapshot


def new_checkpoint_id(at: datetime) -> str:
    """Short enough to type, sortable by time (UTC): cp-20261121-054517-1a2b3c."""
    return f"cp-{at.astimezone(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


# --- snapshot of the bot ----------------------------------------------------------------------------------------


def snapshot_from_ledger(
    ledger: Ledger,
    broker: Broker | None = None,
    strategy_state: dict[str, Any] | None = None,
    guard_counters: dict[str, Any] | None = None,
    *,
    taken_at: datetime | None = None,
) -> dict[str, Any]:
    """Positions and open orders read from the ledger in one transaction (REPEATABLE READ on PostgreSQL, a read
    transaction on SQLite), balances and the broker's positions when a broker is given, plus the strategy state and
    guard counters the bot passes in. Money and quantities are decimal strings."""
    book = ledger.book()
    snapshot: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "taken_at": (taken_at or datetime.now(UTC)).isoformat(),
        "positions": {
            p.symbol: {
                "quantity": str(p.quantity),
                "average_entry_price": str(p.average_entry_price),
                "realized_pnl": str(p.realized_pnl),
                "updated_at": p.updated_at.isoformat(),
            }
            for p in book.positions
            if p.quantity != 0
        },
        "open_orders": [_order_dict(o) for o in book.open_orders],
    }
    snapshot["balances"] = {}
    snapshot["broker_positions"] = {}
    if broker is not None:
        snapshot["balances"] = {
            b.currency: {"available": str(b.available), "hold": str(b.hold)} for b in broker.balances()
        }
        snapshot["broker_positions"] = {
            p.symbol: {"quantity": str(p.quantity), "average_entry_price": str(p.average_entry_price)}
            for p in broker.positions()
        }
    snapshot["strategy_state"] = strategy_state or {}
    snapshot["guard_counters"] = guard_counters or {}
    return snapshot


def _order_dict(order: OrderRecord) -> dict[str, Any]:
    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return {
        "client_order_id": order.client_order_id,
        "exchange_order_id": order.exchange_order_id,
        "session_id": order.session_id,
        "symbol": order.symbol,
        "side": order.side,
        "order_type": order.order_type,
        "time_in_force": order.time_in_force,
        "quantity": str(order.quantity),
        "limit_price": text(order.limit_price),
        "stop_price": text(order.stop_price),
        "expire_at": order.expire_at.isoformat() if order.expire_at else None,
        "reduce_only": order.reduce_only,
        "status": order.status,
        "filled_quantity": str(order.filled_quantity),
        "created_at": order.created_at.isoformat(),
    }


# --- the store ----------------------------------------------------------------------------------------------------


class CheckpointStore:
    """Create, list, verify and restore one account's checkpoints in the ledger database (warm) with a copy in
    `cold` (the whole store, or this account's view of it: the copies go under accounts/<account>/ either way)."""

    def __init__(
        self,
        database_url: str,
        cold: ObjectStore,
        *,
        account: str = DEFAULT_ACCOUNT,
        retention: int = 10,
        compress: bool = True,
        migrate: bool = True,
    ) -> None:
        if retention < 1:
            raise CheckpointError(f"retention must be at least 1 (got {retention})")
        self.database_url = database_url
        self.account = account
        # The warm copies: the checkpoints table, through a Ledger scoped to the account.
        self.ledger = Ledger(database_url, account=account, migrate=migrate)
        self.cold = account_store(cold, account)
        self.retention = retention
        self.compress = compress
        self.last_create_ms: float | None = None
        self.last_restore_ms: float | None = None

    def dispose(self) -> None:
        self.ledger.dispose()

    # --- create

    def create(
        self, snapshot: dict[str, Any], *, reason: str, session_id: str | None = None, at: datetime | None = None
    ) -> CheckpointInfo:
        """Store the snapshot in the warm table and the cold tier, then keep only the newest `retention`."""
        started = time.perf_counter()
        created_at = at or datetime.now(UTC)
        checkpoint_id = new_checkpoint_id(created_at)
        payload = encode_snapshot(snapshot, compress=self.compress)
        row = Checkpoint(
            account=self.account,
            id=checkpoint_id,
            created_at=created_at,
            session_id=session_id,
            reason=reason,
            compressed=self.compress,
            size_bytes=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
            payload=payload,
            cold_key=None,
        )
        name = f"checkpoints/{checkpoint_id}.json{'.gz' if self.compress else ''}"
        try:
            self.cold.put(name, payload)
            row.cold_key = self.cold.stored_name(name)
            manifest = CheckpointInfo.of(row).manifest()
            self.cold.put(f"checkpoints/{checkpoint_id}.manifest.json", json.dumps(manifest, sort_keys=True).encode())
        except (TierUnavailable, ColdStorageError) as error:
            log.warning(
                "checkpoint %s: cold copy not written (%s); the warm copy is the only one", checkpoint_id, error
            )
        self.ledger.add_checkpoint(row)
        self._prune()
        duration_ms = (time.perf_counter() - started) * 1000
        self.last_create_ms = duration_ms
        log.info(
            "Checkpoint %s created (%s): %d bytes%s in %.1f ms",
            checkpoint_id,
            reason,
            len(payload),
            " gzip" if self.compress else "",
            duration_ms,
        )
        return CheckpointInfo.of(row, duration_ms)

    def _prune(self) -> None:
        doomed = [(row.id, row.cold_key) for row in self.ledger.prune_checkpoints(keep=self.retention)]
        for checkpoint_id, cold_key in doomed:
            if cold_key is None:
                continue  # no cold copy was written, nor its manifest
            for key in (cold_key, _manifest_key(cold_key, checkpoint_id)):
                try:
                    self.cold.store.delete(key)  # by its full name: copies from before accounts sit at the root
                except (TierUnavailable, ColdStorageError) as error:
                    log.warning("checkpoint %s: cold copy %s not deleted (%s)", checkpoint_id, key, error)
        if doomed:
            log.info("Checkpoint retention %d: deleted %d older checkpoint(s)", self.retention, len(doomed))

    # --- read

    def list(self) -> list[CheckpointInfo]:
        """Every kept checkpoint, newest first."""
        return [CheckpointInfo.of(row) for row in self.ledger.checkpoints()]

    def get(self, checkpoint_id: str) -> CheckpointInfo:
        row = self._row(checkpoint_id)
        if row is None:
            raise CheckpointNotFound(f"no checkpoint {checkpoint_id}; {self._newest_good_hint()}")
        return CheckpointInfo.of(row)

    def _row(self, checkpoint_id: str) -> Checkpoint | None:
        """This account's checkpoint with that id; another account's id is no checkpoint here."""
        row = self.ledger.get_checkpoint(checkpoint_id)
        return row if row is not None and row.account == self.account else None

    def _verified(self, checkpoint_id: str) -> _Verified:
        row = self._row(checkpoint_id)
        if row is None:
            raise CheckpointNotFound(f"no checkpoint {checkpoint_id}")
        info = CheckpointInfo.of(row)
        try:
            return info, self._check(row.payload, info), "warm", []
        except CheckpointCorrupt as error:
            warm_problem = str(error)
        if info.cold_key is None:
            raise CheckpointCorrupt(f"{warm_problem}; no cold copy")
        try:
            snapshot = self._check(self.cold.store.get(info.cold_key), info)
        except CheckpointCorrupt as error:
            raise CheckpointCorrupt(f"{warm_problem}; cold copy {info.cold_key}: {error}") from None
        except (TierUnavailable, ColdStorageError) as error:
            raise CheckpointCorrupt(f"{warm_problem}; cold copy {info.cold_key} unreadable: {error}") from None
        note = f"warm copy of {checkpoint_id} is corrupt ({warm_problem}); restored from the cold copy {info.cold_key}"
        return info, snapshot, "cold", [note]

    @staticmethod
    def _check(payload: bytes, info: CheckpointInfo) -> dict[str, Any]:
        return verify_payload(payload, sha256=info.sha256, size_bytes=info.size_bytes, compressed=info.compressed)

    def latest_good(self, *, excluding: str | None = None) -> CheckpointInfo | None:
        """The newest checkpoint whose warm or cold copy verifies, or None."""
        for info in self.list():
            if info.id == excluding:
                continue
            try:
                self._verified(info.id)
            except CheckpointError:
                continue
            return info
        return None

    def _newest_good_hint(self, excluding: str | None = None) -> str:
        good = self.latest_good(excluding=excluding)
        return f"newest good checkpoint: {good.id if good else 'none'}"

    # --- restore

    def restore_checkpoint(self, checkpoint_id: str) -> RestoredCheckpoint:
        """Verify and read a checkpoint: the warm copy, or the cold copy when the warm one is corrupt."""
        started = time.perf_counter()
        try:
            info, snapshot, source, notes = self._verified(checkpoint_id)
        except CheckpointNotFound:
            raise CheckpointNotFound(f"no checkpoint {checkpoint_id}; {self._newest_good_hint()}") from None
        except CheckpointCorrupt as error:
            hint = self._newest_good_hint(excluding=checkpoint_id)
            message = f"checkpoint {checkpoint_id} is corrupt ({error}); {hint}"
            log.error("%s", message)
            raise CheckpointCorrupt(message) from None
        for note in notes:
            log.warning("%s", note)
        duration_ms = (time.perf_counter() - started) * 1000
        self.last_restore_ms = duration_ms
        log.info("Restored from checkpoint %s (%s copy) in %.1f ms", checkpoint_id, source, duration_ms)
        return RestoredCheckpoint(info, snapshot, source, duration_ms, notes)

    def restore(self, checkpoint_id: str) -> dict[str, Any]:
        """The verified snapshot of a checkpoint (see restore_checkpoint)."""
        return self.restore_checkpoint(checkpoint_id).snapshot


def checkpoint_store_from_settings(
    settings: Settings, *, on_availability: Callable[[bool], None] | None = None, cold: ObjectStore | None = None
) -> CheckpointStore:
    """ACCOUNT's checkpoints: DATABASE_URL (warm), COLD_STORAGE_URL (cold, unless a store is passed; copies under
    accounts/<account>/), CHECKPOINT_RETENTION_COUNT, CHECKPOINT_ENABLE_COMPRESSION."""
    return CheckpointStore(
        settings.database_url,
        cold if cold is not None else cold_store_from_settings(settings, on_availability=on_availability),
        account=settings.account,
        retention=settings.checkpoint_retention_count,
        compress=settings.checkpoint_enable_compression,
    )


_Verified = tuple[CheckpointInfo, dict[str, Any], Source, list[str]]


def _manifest_key(cold_key: str, checkpoint_id: str) -> str:
    """The manifest beside a cold copy: `<folder of cold_key>/<id>.manifest.json`."""
    folder, _, _ = cold_key.rpartition("/")
    return f"{folder}/{checkpoint_id}.manifest.json" if folder else f"{checkpoint_id}.manifest.json"
