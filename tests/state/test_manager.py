"""StateManager with both tiers up: reads, writes, versions, and the coherence rules."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from trader.settings import load_settings
from trader.state.base import BatchResult, StateRecord, StorageTier
from trader.state.hot import MemoryCache, RedisCache
from trader.state.journal import WriteJournal
from trader.state.manager import StateManager
from trader.state.warm import SqlWarmStore


class RefusingTier:
    """A real tier that refuses to store the chosen keys (as a database refuses a bad row)."""

    def __init__(self, inner: StorageTier, refuse: set[str]) -> None:
        self.inner = inner
        self.refuse = refuse
        self.name = f"refusing-{inner.name}"

    def get_many(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        return self.inner.get_many(keys)

    def put_many(self, records: Sequence[StateRecord]) -> BatchResult:
        result = self.inner.put_many([r for r in records if r.key not in self.refuse])
        result.failed.update({r.key: "refused" for r in records if r.key in self.refuse})
        return result

    def delete_many(self, keys: Sequence[str]) -> BatchResult:
        return self.inner.delete_many(keys)

    def keys(self, pattern: str = "*") -> list[str]:
        return self.inner.keys(pattern)

    def ping(self) -> bool:
        return self.inner.ping()


def test_set_then_get_returns_the_value_at_version_one(memory_manager: StateManager) -> None:
    memory_manager.set("position:BTC-USD", {"qty": "0.5", "side": "long"})

    assert memory_manager.get("position:BTC-USD") == {"qty": "0.5", "side": "long"}
    assert memory_manager.get_record("position:BTC-USD").version == 1  # type: ignore[union-attr]
    assert memory_manager.get("missing", default="none") == "none"


def test_every_write_bumps_the_stored_version(memory_manager: StateManager) -> None:
    for value in range(3):
        memory_manager.set("k", value)
    memory_manager.batch_set({"k": 99, "other": 1})

    assert memory_manager.warm.get_many(["k"])["k"].version == 4
    assert memory_manager.get_record("k") == memory_manager.warm.get_many(["k"])["k"]


def test_delete_removes_the_key_and_a_later_write_starts_at_version_one(memory_manager: StateManager) -> None:
    memory_manager.set("k", 1)
    memory_manager.set("k", 2)

    memory_manager.delete("k")
    assert memory_manager.get("k") is None
    memory_manager.set("k", 3)

    assert memory_manager.get_record("k").version == 1  # type: ignore[union-attr]


def test_batch_operations_and_patterns(memory_manager: StateManager) -> None:
    memory_manager.batch_set({f"order:{i}": {"i": i} for i in range(120)} | {"expired:1": 1, "expired:2": 2})

    assert memory_manager.batch_get(["order:7", "order:119", "nope"]) == {"order:7": {"i": 7}, "order:119": {"i": 119}}
    stale = memory_manager.get_keys_by_pattern("expired:*")
    assert stale == ["expired:1", "expired:2"]
    assert memory_manager.batch_delete(stale).stored == stale
    assert memory_manager.get_keys_by_pattern("expired:*") == []
    assert len(memory_manager.get_keys_by_pattern("order:*")) == 120


def test_the_cache_is_written_only_with_keys_the_warm_tier_stored(
    sqlite_store: SqlWarmStore, tmp_path: Path, clock: Any
) -> None:
    hot = MemoryCache()
    warm = RefusingTier(sqlite_store, refuse={"b", "d"})
    manager = StateManager(hot, warm, journal=WriteJournal(tmp_path / "j"), batch_size=2, clock=clock)

    result = manager.batch_set({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5})

    assert sorted(result.stored) == ["a", "c", "e"] and sorted(result.failed) == ["b", "d"]
    assert sorted(hot.keys()) == ["a", "c", "e"]
    assert manager.verify_coherence().match


def test_a_refused_rewrite_keeps_the_previous_value_cached_and_served(
    sqlite_store: SqlWarmStore, tmp_path: Path, clock: Any
) -> None:
    warm = RefusingTier(sqlite_store, refuse=set())
    manager = StateManager(MemoryCache(), warm, journal=WriteJournal(tmp_path / "j"), clock=clock)
    manager.set("k", "old")
    warm.refuse.add("k")

    assert manager.set("k", "new").failed == {"k": "refused"}

    assert manager.get("k") == "old"
    assert manager.verify_coherence().match


def test_a_cached_record_the_manager_did_not_write_is_not_served(memory_manager: StateManager) -> None:
    memory_manager.set("k", "stored")
    stale = replace(memory_manager.warm.get_many(["k"])["k"], value=b'"stale"')
    fresh = StateManager(
        memory_manager.hot, memory_manager.warm, journal=memory_manager.journal, clock=memory_manager.clock
    )
    memory_manager.hot.put_many([stale])  # e.g. left by an earlier process

    assert fresh.get("k") == "stored"
    assert memory_manager.hot.get_many(["k"])["k"].value == b'"stored"'  # the read re-cached what storage holds


def test_a_cached_record_failing_its_checksum_is_not_served(memory_manager: StateManager) -> None:
    memory_manager.set("k", "stored")
    good = memory_manager.hot.get_many(["k"])["k"]
    memory_manager.hot.put_many([replace(good, value=b'"corrupt"')])

    assert memory_manager.get("k") == "stored"


def test_verify_coherence_finds_a_divergent_cache_and_stops_serving_it(memory_manager: StateManager) -> None:
    memory_manager.batch_set({"a": 1, "b": 2, "c": 3})
    good = memory_manager.hot.get_many(["b"])["b"]
    memory_manager.hot.put_many([replace(good, version=good.version + 5)])
    memory_manager.hot.delete_many(["c"])

    report = memory_manager.verify_coherence()

    assert report.compared == 3
    assert report.mismatched == ["b"] and report.missing_from_hot == ["c"]
    assert not report.match and not report.coherent
    assert memory_manager.get_record("b") == memory_manager.warm.get_many(["b"])["b"]


def test_verify_coherence_logs_match_true_when_cache_equals_storage(
    memory_manager: StateManager, caplog: pytest.LogCaptureFixture
) -> None:
    memory_manager.batch_set({f"k:{i}": i for i in range(10)})

    with caplog.at_level(logging.INFO, logger="trader.state"):
        report = memory_manager.verify_coherence()

    assert report.match and report.compared == 10
    assert "Match: True" in caplog.text


def test_sequential_and_batch_writes_leave_byte_identical_caches(sqlite_url: str, tmp_path: Path, clock: Any) -> None:
    from trader.ledger.db import migrate

    migrate(sqlite_url)
    other = f"sqlite:///{(tmp_path / 'other.db').as_posix()}"
    migrate(other)
    values = {f"k:{i}": {"n": i, "s": "x" * i} for i in range(30)}
    sequential = StateManager(
        MemoryCache(), SqlWarmStore(sqlite_url), journal=WriteJournal(tmp_path / "1"), clock=clock
    )
    batched = StateManager(
        MemoryCache(), SqlWarmStore(other), journal=WriteJournal(tmp_path / "2"), batch_size=7, clock=clock
    )

    for key, value in values.items():
        sequential.set(key, value)
    batched.batch_set(values)
    for key in list(values)[:10]:
        sequential.set(key, "again")
    batched.batch_set(dict.fromkeys(list(values)[:10], "again"))

    keys = sorted(values)
    assert sequential.hot.get_many(keys) == batched.hot.get_many(keys)
    assert sequential.warm.get_many(keys) == batched.warm.get_many(keys)


def test_status_reports_tiers_and_journal(memory_manager: StateManager) -> None:
    memory_manager.set("k", 1)

    status = memory_manager.status().as_dict()

    assert status["hot_tier"] == "memory" and status["warm_tier"] == "sqlite"
    assert status["hot_up"] and status["warm_up"] and status["journal_depth"] == 0
    assert status["last_warm_write_at"] is not None and status["trusted_keys"] == 1


def test_from_settings_picks_memory_or_redis_and_the_sql_store(sqlite_url: str, redis_url: str, tmp_path: Path) -> None:
    plain = StateManager.from_settings(load_settings(database_url=sqlite_url, state_dir=tmp_path, state_batch_size=10))
    with_redis = StateManager.from_settings(
        load_settings(database_url=sqlite_url, redis_url=redis_url, state_dir=tmp_path)
    )

    assert isinstance(plain.hot, MemoryCache) and isinstance(plain.warm, SqlWarmStore)
    assert plain.batch_size == 10 and plain.journal.path.parent == tmp_path
    assert isinstance(with_redis.hot, RedisCache)
    with_redis.set("k", {"v": 1})
    assert plain.get("k") == {"v": 1}  # same warm store
    assert with_redis.verify_coherence().match
