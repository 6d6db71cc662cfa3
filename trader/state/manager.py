"""StateManager: the HOT cache in front of the WARM store, with failover, journaling and coherence checks, and
the COLD tier for keys moved out of both (archive/restore_archive, trader/state/archive.py).

Coherence guarantee (how a read never returns a value storage does not hold):

* Writes go to the warm tier first; the cache is written only with the records the warm tier accepted (a
  partial batch failure caches exactly the stored keys). Versions are the stored version + 1.
* The manager keeps a *trusted* set: keys whose cached record it wrote itself after a warm write, loaded from
  the warm tier, or found byte-identical to the warm record in the last coherence check. Reads are served from
  the cache only for trusted keys with an intact checksum; any other key is read from the warm tier (in one
  IN query per batch) and then cached and trusted. A cache write that fails, a hot outage, or a mismatch found
  by verify_coherence() drops keys from the trusted set, so a stale cached record is never served. This costs
  nothing on the hot path (no warm round trip per cached read); it assumes this manager is the only writer of
  its keys, which is how the bot runs (one process owns its state).
* While the warm tier is down the journal and the cache are the storage of record: writes are journaled
  (fsync'd) before the cache is written, reads come from the journal's latest entry, else the cache. A key in
  neither is reported absent only when the cache is known complete (restored by recover_hot or verified whole
  by verify_coherence, with no cache failure or eviction since); otherwise the read raises TierUnavailable
  rather than claim that a stored key does not exist.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from trader.state.archive import ArchiveInfo, ColdArchive
from trader.state.base import (
    BatchResult,
    ObjectStore,
    StateRecord,
    StorageTier,
    TierUnavailable,
    account_state_dir,
    checksum,
    encode_value,
)
from trader.state.cold import account_store
from trader.state.hot import MemoryCache, RedisCache, glob_regex, state_prefix
from trader.state.journal import JournalEntry, Op, ReplayResult, WriteJournal
from trader.state.warm import SqlWarmStore

if TYPE_CHECKING:
    from trader.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CoherenceReport:
    """The cache compared with storage record by record (value bytes, checksum, version, updated_at)."""

    compared: int
    mismatched: list[str] = field(default_factory=list)  # cached record differs from storage
    missing_from_hot: list[str] = field(default_factory=list)  # in storage, not cached
    extra_in_hot: list[str] = field(default_factory=list)  # cached, not in storage
    duration_ms: float = 0.0

    @property
    def coherent(self) -> bool:
        """No cached record disagrees with storage (a bounded cache may still miss keys)."""
        return not self.mismatched and not self.extra_in_hot

    @property
    def match(self) -> bool:
        """The cache equals storage byte for byte: every key present, every record identical."""
        return self.coherent and not self.missing_from_hot


@dataclass(frozen=True)
class StateStatus:
    """Tier health and recovery figures for metrics and health checks."""

    hot_tier: str
    hot_up: bool
    warm_tier: str
    warm_up: bool
    journal_depth: int
    hot_down_since: datetime | None
    warm_down_since: datetime | None
    last_warm_write_at: datetime | None
    last_hot_recovery_ms: float | None
    last_hot_recovered_keys: int | None
    last_warm_recovery_ms: float | None
    last_warm_replayed_entries: int | None
    trusted_keys: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StateManager:
    """get/set/delete (single and batch) over a hot cache and a warm store, surviving either tier's outage."""

    def __init__(
        self,
        hot: StorageTier,
        warm: StorageTier,
        *,
        journal: WriteJournal,
        batch_size: int = 1000,
        clock: Clock = utc_now,
        probe_interval: float = 1.0,
        cold: ObjectStore | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        self.hot = hot
        self.warm = warm
        self.cold = ColdArchive(self, cold) if cold is not None else None
        self.journal = journal
        self.batch_size = batch_size
        self.clock = clock
        self.probe_interval = probe_interval
        self._lock = threading.RLock()
        # Called with (tier, seconds) after each automatic recovery: "redis" or "postgres" (see on_recovery).
        self._recovery_listeners: list[Callable[[str, float], None]] = []
        self._trusted: set[str] = set()
        self._hot_complete = False  # the cache holds every stored key, so a miss means absent (see _degraded_get)
        self._evictions_mark = 0
        self._started_at = clock()
        self._hot_up = True
        self._warm_up = True
        self._hot_down_since: datetime | None = None
        self._warm_down_since: datetime | None = None
        self._last_hot_probe = 0.0
        self._last_warm_probe = 0.0
        self._last_warm_write_at: datetime | None = None
        self._last_checkpoint_at: datetime | None = None
        self._last_hot_recovery_ms: float | None = None
        self._last_hot_recovered_keys: int | None = None
        self._last_warm_recovery_ms: float | None = None
        self._last_warm_replayed: int | None = None
        self._journaled: dict[str, StateRecord | None] = {}
        self._worker: ThreadPoolExecutor | None = None  # reads ahead during recover_hot (see _background)
        pending = journal.pending()
        if pending:
            # A previous run journaled writes the warm tier never got: replay them before trusting warm reads.
            self._index_journal(pending)
            self._warm_up = False
            self._warm_down_since = self._started_at
            log.warning(
                "PostgreSQL recovery pending: %d journal entries in %s from a previous run", len(pending), journal.path
            )

    @classmethod
    def from_settings(cls, settings: Settings, *, cold: ObjectStore | None = None) -> StateManager:
        """The state of ACCOUNT: RedisCache under state:<account>: when REDIS_URL is set (else MemoryCache),
        SqlWarmStore on DATABASE_URL's rows of the account, journal in the account's state folder; `cold`
        (COLD_STORAGE_URL's store) enables archive() and restore_archive() under accounts/<account>/."""
        account = settings.account
        hot: StorageTier = (
            RedisCache(settings.redis_url, prefix=state_prefix(account)) if settings.redis_url else MemoryCache()
        )
        warm = SqlWarmStore(settings.database_url, settings.state_batch_size, account=account)
        try:
            warm.ensure_schema()
        except TierUnavailable as error:
            log.warning("PostgreSQL outage detected at startup (warm tier %s): %s", warm.name, error)
        journal = WriteJournal(account_state_dir(settings) / "warm-journal.jsonl")
        scoped = account_store(cold, account) if cold is not None else None
        return cls(hot, warm, journal=journal, batch_size=settings.state_batch_size, cold=scoped)

    # --- public operations -----------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        record = self.batch_get_records([key]).get(key)
        return default if record is None else record.decoded()

    def get_record(self, key: str) -> StateRecord | None:
        return self.batch_get_records([key]).get(key)

    def set(self, key: str, value: Any) -> BatchResult:
        return self.batch_set({key: value})

    def delete(self, key: str) -> BatchResult:
        return self.batch_delete([key])

    def batch_get(self, keys: Iterable[str]) -> dict[str, Any]:
        """Decoded values of the keys that exist; absent keys are left out."""
        return {key: record.decoded() for key, record in self.batch_get_records(keys).items()}

    def batch_get_records(self, keys: Iterable[str]) -> dict[str, StateRecord]:
        with self._lock:
            self._maybe_recover()
            wanted = list(dict.fromkeys(keys))
            if not self._warm_up:
                return self._degraded_get(wanted)
            found: dict[str, StateRecord] = {}
            cached = [key for key in wanted if key in self._trusted]
            if cached and self._hot_up:
                for key, record in self._hot_call(lambda: self.hot.get_many(cached), {}).items():
                    if record.intact:
                        found[key] = record
                    else:
                        self._trusted.discard(key)
                        log.warning("Cached record for %s fails its checksum; reading the warm tier", key)
            missing = [key for key in wanted if key not in found]
            if missing:
                try:
                    stored = self.warm.get_many(missing)
                except TierUnavailable as error:
                    self._mark_warm_down(error)
                    found.update(self._degraded_get(missing))
                    return found
                found.update(stored)
                self._cache_put(list(stored.values()))
            return found

    def batch_set(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> BatchResult:
        """Write values (JSON-able); result.stored are the keys storage accepted, result.failed the refused ones."""
        pairs = items.items() if isinstance(items, Mapping) else items
        encoded = {_checked_key(key): encode_value(value) for key, value in pairs}
        with self._lock:
            self._maybe_recover()
            result = BatchResult()
            keys = list(encoded)
            for start in range(0, len(keys), self.batch_size):
                chunk = keys[start : start + self.batch_size]
                now = self.clock()
                numbered: list[StateRecord] = []
                if self._warm_up:
                    pending = self._warm_set(chunk, encoded, now, result)
                    if pending is None:
                        continue
                    numbered = pending
                self._journal_set(chunk, encoded, now, result, numbered)
            return result

    def batch_delete(self, keys: Iterable[str]) -> BatchResult:
        """Delete keys; result.stored are the keys whose deletion storage accepted."""
        wanted = [_checked_key(key) for key in dict.fromkeys(keys)]
        with self._lock:
            self._maybe_recover()
            result = BatchResult()
            for start in range(0, len(wanted), self.batch_size):
                chunk = wanted[start : start + self.batch_size]
                if self._warm_up:
                    try:
                        removed = self.warm.delete_many(chunk)
                    except TierUnavailable as error:
                        self._mark_warm_down(error)
                    else:
                        self._last_warm_write_at = self.clock()
                        result.stored.extend(removed.stored)
                        result.failed.update(removed.failed)
                        self._cache_delete(removed.stored)
                        continue
                self._journal_write([("delete", key, None, False) for key in chunk])
                result.stored.extend(chunk)
                self._cache_delete(chunk)
            return result

    def get_keys_by_pattern(self, pattern: str = "*") -> list[str]:
        """Keys matching a Redis-style glob (*, ?, [..]), sorted."""
        with self._lock:
            self._maybe_recover()
            if self._warm_up:
                try:
                    return sorted(self.warm.keys(pattern))
                except TierUnavailable as error:
                    self._mark_warm_down(error)
            keys = set(self._hot_call(lambda: self.hot.keys(pattern), None) or []) if self._hot_up else set()
            if not self._hot_up:
                raise TierUnavailable("both state tiers are down: keys cannot be listed until one returns")
            if not self.hot_complete:
                raise TierUnavailable(
                    f"warm tier {self.warm.name} is down and the cache is not known to hold every key: "
                    "keys cannot be listed until it returns"
                )
            regex = glob_regex(pattern)
            for key, record in self._journaled.items():
                if record is None:
                    keys.discard(key)
                elif regex.fullmatch(key):
                    keys.add(key)
            return sorted(keys)

    # --- recovery --------------------------------------------------------------------------------------------

    def archive(self, pattern: str) -> ArchiveInfo | None:
        """Move keys matching `pattern` from the hot and warm tiers to one verified object in the cold tier."""
        return self._cold().archive(pattern)

    def restore_archive(self, name: str) -> int:
        """Write an archive's keys back to the warm and hot tiers (sha256 and checksums verified first)."""
        return self._cold().restore(name)

    def _cold(self) -> ColdArchive:
        if self.cold is None:
            raise TierUnavailable("no cold tier configured for this StateManager (pass cold=, or COLD_STORAGE_URL)")
        return self.cold

    def recover_hot(self) -> int | None:
        """Batch-restore the hot tier from warm (stale extras removed), then verify coherence; keys restored."""
        with self._lock:
            if not self._warm_up:
                log.warning("Redis recovery postponed: warm tier %s is down, nothing to restore from", self.warm.name)
                return None
            started = time.perf_counter()
            log.info("Redis recovery started: restoring hot tier %s from warm tier %s", self.hot.name, self.warm.name)
            restored = total = 0
            try:
                cached_before = self.hot.keys("*")  # stale extras are deleted once every stored key is known
                self._trusted.clear()
                write, pages = self._export()
                with closing(pages):
                    for page in pages:
                        stored = write(page)
                        self._trusted.update(stored.stored)
                        restored += len(stored.stored)
                        total += len(page)
                extras = [key for key in cached_before if key not in self._trusted]
                for start in range(0, len(extras), self.batch_size):
                    self.hot.delete_many(extras[start : start + self.batch_size])
            except TierUnavailable as error:
                # Either tier failing mid-restore: nothing is trusted and the next probe restores from scratch.
                self._trusted.clear()
                if self.warm.ping():
                    self._mark_hot_down(error)
                else:
                    self._mark_warm_down(error)
                return None
            self._hot_up = True
            self._hot_down_since = None
            if restored == total:
                self._mark_hot_complete()
            elapsed = (time.perf_counter() - started) * 1000
            self._last_hot_recovery_ms = elapsed
            self._last_hot_recovered_keys = restored
            log.info("Recovered %d keys to Redis in %.1f ms (hot tier %s)", restored, elapsed, self.hot.name)
            self._announce_recovery("redis", elapsed)
            self._verify_after_recovery()
            return restored

    recover_redis = recover_hot

    def recover_warm(self) -> ReplayResult | None:
        """Replay the write journal into the warm tier exactly once, refresh the cache, verify coherence."""
        with self._lock:
            started = time.perf_counter()
            depth = len(self.journal.pending())
            log.info("PostgreSQL recovery started: replaying %d journal entries into %s", depth, self.warm.name)
            try:
                replayed = self.journal.replay(self.warm, self.batch_size)
            except TierUnavailable as error:
                self._index_journal(self.journal.pending())
                self._mark_warm_down(error)
                return None
            self._warm_up = True
            self._warm_down_since = None
            self._journaled.clear()
            self._last_warm_write_at = self.clock()
            if replayed.failed:
                log.error(
                    "PostgreSQL recovery: warm tier %s refused %d journaled keys (%s); they keep their stored value",
                    self.warm.name,
                    len(replayed.failed),
                    "; ".join(f"{key}: {reason}" for key, reason in list(replayed.failed.items())[:5]),
                )
            # The cache held the journaled records (rebased versions may differ): refresh it from what was applied.
            self._cache_put([record for record in replayed.final.values() if record is not None])
            self._cache_delete([key for key, record in replayed.final.items() if record is None])
            self._cache_delete(list(replayed.failed))
            elapsed = (time.perf_counter() - started) * 1000
            self._last_warm_recovery_ms = elapsed
            self._last_warm_replayed = replayed.applied_entries
            log.info(
                "PostgreSQL recovery completed: replayed %d journal entries exactly once (through seq %d) in %.1f ms",
                replayed.applied_entries,
                replayed.last_seq,
                elapsed,
            )
            self._announce_recovery("postgres", elapsed)
            if self._hot_up:
                self._verify_after_recovery()
            return replayed

    def on_recovery(self, listener: Callable[[str, float], None]) -> None:
        """Call `listener(tier, seconds)` after each automatic recovery: "redis", "postgres", and "s3" when the
        cold store falls back to a local folder and syncs it back."""
        self._recovery_listeners.append(listener)
        if self.cold is not None:
            self.cold.on_recovery(listener)

    def _announce_recovery(self, tier: str, elapsed_ms: float) -> None:
        for listener in self._recovery_listeners:
            try:
                listener(tier, elapsed_ms / 1000)
            except Exception as error:  # a metrics hook never breaks a recovery
                log.warning("recovery listener failed: %s", error)

    def verify_coherence(self, keys: Sequence[str] | None = None) -> CoherenceReport:
        """Compare cached records with storage in batches; trust exactly the keys found identical."""
        with self._lock:
            started = time.perf_counter()
            if not self._warm_up or not self._hot_up:
                raise TierUnavailable("coherence can only be verified while both tiers are up")
            try:
                full = keys is None
                stored_keys = self.warm.keys("*") if keys is None else list(dict.fromkeys(keys))
                report = CoherenceReport(compared=len(stored_keys))
                if full:
                    present = set(stored_keys)
                    report.extra_in_hot = sorted(key for key in self.hot.keys("*") if key not in present)
                    self._trusted.clear()
                for start in range(0, len(stored_keys), self.batch_size):
                    chunk = stored_keys[start : start + self.batch_size]
                    stored = self.warm.get_many(chunk)
                    cached = self.hot.get_many(chunk)
                    for key in chunk:
                        if key in cached:
                            if cached[key] == stored.get(key) and cached[key].intact:
                                self._trusted.add(key)
                            else:
                                report.mismatched.append(key)
                                self._trusted.discard(key)
                        elif key in stored:
                            report.missing_from_hot.append(key)
            except TierUnavailable as error:
                if self.warm.ping():
                    self._mark_hot_down(error)
                else:
                    self._mark_warm_down(error)
                raise
            report.duration_ms = (time.perf_counter() - started) * 1000
            if full and report.match:
                self._mark_hot_complete()
            log.info(
                "Cache coherence check: compared %d keys, %d mismatched, %d missing from hot, %d extra in hot; "
                "Match: %s",
                report.compared,
                len(report.mismatched),
                len(report.missing_from_hot),
                len(report.extra_in_hot),
                report.match,
            )
            return report

    def close(self) -> None:
        """Release the tiers' connections (engine pool, Redis client) and the read-ahead worker."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        for tier in (self.hot, self.warm):
            for name in ("dispose", "close"):
                release = getattr(tier, name, None)
                if callable(release):
                    release()
                    break

    # --- health ----------------------------------------------------------------------------------------------

    def data_loss_estimate(self, last_checkpoint_at: datetime | None = None) -> float:
        """Seconds of writes at risk: since last_checkpoint_at if given, else since the last successful warm write."""
        since = last_checkpoint_at or self._last_warm_write_at or self._started_at
        return max(0.0, (self.clock() - since).total_seconds())

    def note_checkpoint(self, created_at: datetime) -> None:
        """Remember the latest checkpoint so an outage's data_loss_estimate is measured from it."""
        self._last_checkpoint_at = created_at

    def status(self) -> StateStatus:
        with self._lock:
            return StateStatus(
                hot_tier=self.hot.name,
                hot_up=self._hot_up,
                warm_tier=self.warm.name,
                warm_up=self._warm_up,
                journal_depth=self.journal.depth(),
                hot_down_since=self._hot_down_since,
                warm_down_since=self._warm_down_since,
                last_warm_write_at=self._last_warm_write_at,
                last_hot_recovery_ms=self._last_hot_recovery_ms,
                last_hot_recovered_keys=self._last_hot_recovered_keys,
                last_warm_recovery_ms=self._last_warm_recovery_ms,
                last_warm_replayed_entries=self._last_warm_replayed,
                trusted_keys=len(self._trusted),
            )

    # --- internals -------------------------------------------------------------------------------------------

    def _verify_after_recovery(self) -> None:
        """Verify coherence after a recovery; a tier failing during the check is already marked down."""
        try:
            self.verify_coherence()
        except TierUnavailable as error:
            log.warning("Cache coherence check after recovery interrupted: %s", error)

    def _maybe_recover(self) -> None:
        """Probe a down tier at most once per probe_interval and recover it when it answers."""
        now = time.monotonic()
        if not self._warm_up and now - self._last_warm_probe >= self.probe_interval:
            self._last_warm_probe = now
            if self.warm.ping():
                self.recover_warm()
        if not self._hot_up and self._warm_up and now - self._last_hot_probe >= self.probe_interval:
            self._last_hot_probe = now
            if self.hot.ping():
                self.recover_hot()

    def _background(self) -> ThreadPoolExecutor:
        """One worker thread, kept between recoveries (starting a thread costs about what a page read does)."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-read-ahead")
        return self._worker

    def _export(self) -> tuple[Callable[[Any], BatchResult], Generator[Sequence[Any], None, None]]:
        """The warm tier's records page by page and the cache write that takes a page, for recover_hot.

        A SqlWarmStore exports plain rows (one keyset-paginated scan) that RedisCache frames straight into MSET;
        other tiers fall back to StateRecords, or to the key list and IN reads. The next page is read while the
        cache writes the current one.
        """
        iter_rows = getattr(self.warm, "iter_rows", None)
        put_rows = getattr(self.hot, "put_rows", None)
        if callable(iter_rows) and callable(put_rows):
            return put_rows, _read_ahead(iter_rows(self.batch_size), self._background)
        iter_all = getattr(self.warm, "iter_all", None)
        if callable(iter_all):
            return self.hot.put_many, _read_ahead(iter_all(self.batch_size), self._background)
        return self.hot.put_many, _read_ahead(self._pages_by_key(), self._background)

    def _pages_by_key(self) -> Generator[list[StateRecord], None, None]:
        keys = self.warm.keys("*")
        for start in range(0, len(keys), self.batch_size):
            yield list(self.warm.get_many(keys[start : start + self.batch_size]).values())

    def _mark_hot_complete(self) -> None:
        self._hot_complete = True
        self._evictions_mark = getattr(self.hot, "evictions", 0)

    @property
    def hot_complete(self) -> bool:
        """True when the cache is known to hold every stored key (restored or verified, nothing lost since)."""
        return self._hot_complete and getattr(self.hot, "evictions", 0) == self._evictions_mark

    def _mark_hot_down(self, error: Exception) -> None:
        self._trusted.clear()
        self._hot_complete = False
        self._last_hot_probe = time.monotonic()
        if self._hot_up:
            self._hot_up = False
            self._hot_down_since = self.clock()
            log.warning(
                "Redis outage detected (hot tier %s): %s; serving from warm tier %s",
                self.hot.name,
                error,
                self.warm.name,
            )

    def _mark_warm_down(self, error: Exception) -> None:
        self._last_warm_probe = time.monotonic()
        if self._warm_up:
            self._warm_up = False
            self._warm_down_since = self.clock()
            log.warning(
                "PostgreSQL outage detected (warm tier %s): %s; serving from hot tier %s and journaling writes to %s; "
                "data_loss_estimate=%.1fs",
                self.warm.name,
                error,
                self.hot.name,
                self.journal.path,
                self.data_loss_estimate(self._last_checkpoint_at),
            )

    def _hot_call(self, call: Callable[[], Any], fallback: Any) -> Any:
        try:
            return call()
        except TierUnavailable as error:
            self._mark_hot_down(error)
            return fallback

    def _cache_put(self, records: Sequence[StateRecord]) -> None:
        """Cache records storage holds; a key whose cache write fails is no longer trusted (nor left stale)."""
        if not records:
            return
        keys = [record.key for record in records]
        if not self._hot_up:
            self._trusted.difference_update(keys)
            self._hot_complete = False
            return
        try:
            stored = self.hot.put_many(records)
        except TierUnavailable as error:
            self._trusted.difference_update(keys)
            self._mark_hot_down(error)
            return
        self._trusted.update(stored.stored)
        if stored.failed:
            self._hot_complete = False
            self._trusted.difference_update(stored.failed)
            self._cache_delete(list(stored.failed))

    def _cache_delete(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        self._trusted.difference_update(keys)
        if self._hot_up:
            self._hot_call(lambda: self.hot.delete_many(keys), None)

    def _warm_set(
        self, chunk: list[str], encoded: dict[str, bytes], now: datetime, result: BatchResult
    ) -> list[StateRecord] | None:
        """Write one batch to warm then cache what it stored; None when done.

        When warm goes down, returns the records it had numbered from warm's versions (empty if it never got
        them): the journal keeps those absolute versions, so rows a store committed before failing are
        rewritten identically at replay, never bumped twice.
        """
        try:
            current = self._stored_versions(chunk)
        except TierUnavailable as error:
            self._mark_warm_down(error)
            return []
        records = [_record(key, encoded[key], current.get(key, 0) + 1, now) for key in chunk]
        try:
            stored = self.warm.put_many(records)
        except TierUnavailable as error:
            self._mark_warm_down(error)
            return records
        self._last_warm_write_at = self.clock()
        accepted = set(stored.stored)
        result.stored.extend(stored.stored)
        result.failed.update(stored.failed)
        self._cache_put([record for record in records if record.key in accepted])
        return None

    def _stored_versions(self, keys: list[str]) -> dict[str, int]:
        """Warm versions of keys, by a key/version-only query when the tier offers one."""
        versions = getattr(self.warm, "versions", None)
        if callable(versions):
            return dict(versions(keys))
        return {key: record.version for key, record in self.warm.get_many(keys).items()}

    def _journal_set(
        self,
        chunk: list[str],
        encoded: dict[str, bytes],
        now: datetime,
        result: BatchResult,
        numbered: Sequence[StateRecord] = (),
    ) -> None:
        """Warm is down: version from warm (numbered), the journal, the trusted cache, else rebased at replay."""
        known = {record.key: record for record in numbered}
        unknown = [key for key in chunk if key not in self._journaled and key not in known]
        cached: dict[str, StateRecord] = {}
        trusted = [key for key in unknown if key in self._trusted]
        if trusted and self._hot_up:
            cached = self._hot_call(lambda: self.hot.get_many(trusted), {})
        writes: list[tuple[Op, str, StateRecord | None, bool]] = []
        for key in chunk:
            if key in known:
                writes.append(("set", key, known[key], False))
                continue
            if key in self._journaled:
                base, rebase = _version(self._journaled[key]), False
            elif key in cached and cached[key].intact:
                base, rebase = cached[key].version, False
            else:
                base, rebase = 0, True
            writes.append(("set", key, _record(key, encoded[key], base + 1, now), rebase))
        self._journal_write(writes)
        result.stored.extend(chunk)
        self._cache_put([record for _, _, record, _ in writes if record is not None])

    def _journal_write(self, writes: list[tuple[Op, str, StateRecord | None, bool]]) -> None:
        entries = self.journal.append_many(writes)
        self._index_journal(entries)

    def _index_journal(self, entries: Iterable[JournalEntry]) -> None:
        for entry in entries:
            self._journaled[entry.key] = entry.record

    def _degraded_get(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        """Reads while warm is down: the latest journaled record, else the cache; both down raises."""
        found: dict[str, StateRecord] = {}
        rest: list[str] = []
        for key in keys:
            if key in self._journaled:
                record = self._journaled[key]
                if record is not None:
                    found[key] = record
            else:
                rest.append(key)
        if not rest:
            return found
        cached: dict[str, StateRecord] = {}
        if self._hot_up:
            cached = self._hot_call(lambda: self.hot.get_many(rest), {})
        if not self._hot_up:
            raise TierUnavailable(
                f"both state tiers are down (hot {self.hot.name}, warm {self.warm.name}): "
                f"cannot read {len(rest)} keys that were not written during the outage"
            )
        unknown = [key for key in rest if key not in cached or not cached[key].intact]
        if unknown and not self.hot_complete:
            # The cache may simply not hold these keys: answering "absent" could contradict storage.
            raise TierUnavailable(
                f"warm tier {self.warm.name} is down and {len(unknown)} keys are not cached "
                f"(first: {unknown[0]!r}); they cannot be read until it returns"
            )
        found.update({key: record for key, record in cached.items() if record.intact})
        return found


def _read_ahead(pages: Iterator[T], worker: Callable[[], ThreadPoolExecutor]) -> Generator[T, None, None]:
    """pages; from the third on, each read by the worker while the caller handles the one before.

    The first two pages are read in the caller's thread, so a small source never involves the worker (two
    threads taking turns at the GIL cost more than a page read overlaps). Closing the generator waits for a
    read in flight, then closes the source (releasing its connection).
    """
    upcoming: Future[T | None] | None = None
    try:
        page = next(pages, None)
        if page is None:
            return
        yield page
        page = next(pages, None)
        while page is not None:
            upcoming = worker().submit(next, pages, None)
            yield page
            page = upcoming.result()
            upcoming = None
    finally:
        if upcoming is not None:
            wait([upcoming])
        close = getattr(pages, "close", None)
        if callable(close):
            close()


def _checked_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"state keys are non-empty strings (got {key!r})")
    return key


def _version(record: StateRecord | None) -> int:
    return 0 if record is None else record.version


def _record(key: str, value: bytes, version: int, now: datetime) -> StateRecord:
    return StateRecord(key=key, value=value, checksum=checksum(value), version=version, updated_at=now)
