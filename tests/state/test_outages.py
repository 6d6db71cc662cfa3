"""Real outages: the private redis-server and PostgreSQL cluster are stopped mid-run and brought back; and the
write journal's durability and exactly-once replay."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from trader.state.base import BatchResult, StateRecord, StorageTier, TierUnavailable, checksum, encode_value
from trader.state.hot import MemoryCache, RedisCache
from trader.state.journal import WriteJournal
from trader.state.manager import StateManager
from trader.state.warm import SqlWarmStore

WAIT_SECONDS = 20


def rec(key: str, value: Any, version: int, clock: Any) -> StateRecord:
    data = encode_value(value)
    return StateRecord(key=key, value=data, checksum=checksum(data), version=version, updated_at=clock())


def wait_until(manager: StateManager, tier: str) -> None:
    """Keep operating (as the bot would) until the manager has recovered the tier on its own."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not getattr(manager.status(), f"{tier}_up"):
        assert time.monotonic() < deadline, f"{tier} tier not recovered within {WAIT_SECONDS}s: {manager.status()}"
        with contextlib.suppress(TierUnavailable):  # an uncached read while warm is still down
            manager.get("probe")
        time.sleep(0.1)


def assert_cache_equals_storage(manager: StateManager) -> None:
    stored_keys = manager.warm.keys("*")
    assert sorted(manager.hot.keys("*")) == sorted(stored_keys)
    assert manager.hot.get_many(stored_keys) == manager.warm.get_many(stored_keys)


class CountingFsync:
    def __init__(self) -> None:
        self.calls = 0
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self._real(fd)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> CountingFsync:
    counter = CountingFsync()
    monkeypatch.setattr(os, "fsync", counter)
    return counter


@pytest.fixture
def redis_pg_manager(redis_url: str, private_pg_url: str, tmp_path: Path) -> Iterator[StateManager]:
    """RedisCache on the private redis-server over SqlWarmStore on the private PostgreSQL."""
    hot = RedisCache(redis_url)
    warm = SqlWarmStore(private_pg_url, batch_size=100)
    manager = StateManager(hot, warm, journal=WriteJournal(tmp_path / "journal.jsonl"), batch_size=100)
    yield manager
    hot.close()
    warm.dispose()


# --- Redis (hot) outages ----------------------------------------------------------------------------------------


def test_redis_outage_restores_all_keys_from_warm_tier(
    redis_pg_manager: StateManager, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    manager = redis_pg_manager
    recoveries: list[tuple[str, float]] = []
    manager.on_recovery(lambda tier, seconds: recoveries.append((tier, seconds)))
    manager.batch_set({f"order:{i}": {"i": i} for i in range(400)})
    caplog.set_level(logging.INFO, logger="trader.state")

    redis_server.stop()
    manager.batch_set({f"order:{i}": {"i": i, "filled": True} for i in range(0, 400, 4)})  # warm keeps working
    manager.set("position:BTC-USD", {"qty": "1.5"})
    manager.batch_delete([f"order:{i}" for i in range(390, 400)])
    served = manager.batch_get(["order:0", "order:1", "position:BTC-USD", "order:395"])
    assert "Redis outage detected" in caplog.text
    assert not manager.status().hot_up
    assert served == {"order:0": {"i": 0, "filled": True}, "order:1": {"i": 1}, "position:BTC-USD": {"qty": "1.5"}}

    redis_server.start()
    wait_until(manager, "hot")

    assert "Redis recovery" in caplog.text
    recovered = re.search(r"Recovered (\d+) keys to Redis", caplog.text)
    assert recovered is not None and int(recovered.group(1)) == 391
    assert "Match: True" in caplog.text
    assert_cache_equals_storage(manager)
    assert manager.status().last_hot_recovery_ms is not None
    assert [tier for tier, _ in recoveries] == ["redis"]  # what the metrics exporter's recovery histogram gets
    assert recoveries[0][1] == pytest.approx(manager.status().last_hot_recovery_ms / 1000)


def test_a_paused_redis_times_out_and_recovery_replaces_its_stale_records(
    redis_pg_manager: StateManager, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    manager = redis_pg_manager
    manager.batch_set({f"k:{i}": i for i in range(50)})
    caplog.set_level(logging.INFO, logger="trader.state")

    redis_server.pause()  # connections hang: detection by timeout, and Redis keeps its now-stale data
    try:
        manager.batch_set({f"k:{i}": i * 10 for i in range(10)})
        manager.batch_delete(["k:49"])
        assert manager.get("k:1") == 10
        assert "Redis outage detected" in caplog.text
    finally:
        redis_server.resume()
    wait_until(manager, "hot")

    assert re.search(r"Recovered 49 keys to Redis", caplog.text)
    assert manager.verify_coherence().match
    assert_cache_equals_storage(manager)
    assert manager.get("k:1") == 10 and manager.get("k:49") is None


# --- PostgreSQL (warm) outages ----------------------------------------------------------------------------------


def test_postgresql_outage_journals_writes_and_replays_them_exactly_once(
    redis_pg_manager: StateManager, postgres_cluster: Any, fsyncs: CountingFsync, caplog: pytest.LogCaptureFixture
) -> None:
    manager = redis_pg_manager
    recoveries: list[str] = []
    manager.on_recovery(lambda tier, _seconds: recoveries.append(tier))
    manager.batch_set({f"pos:{i}": {"qty": i} for i in range(200)})
    caplog.set_level(logging.INFO, logger="trader.state")

    postgres_cluster.stop()
    manager.batch_set({f"pos:{i}": {"qty": i + 1000} for i in range(50)})  # known keys: version 2
    manager.batch_set({f"new:{i}": {"n": i} for i in range(30)})  # new keys: version 1
    manager.batch_delete([f"pos:{i}" for i in range(190, 200)])
    manager.set("pos:195", "back")  # re-created after its delete: version 1
    for _ in range(3):
        manager.set("pos:0", "hot")  # versions 3, 4, 5
    assert "PostgreSQL outage" in caplog.text
    assert re.search(r"data_loss_estimate=\d+\.\ds", caplog.text)
    assert manager.status().journal_depth == 50 + 30 + 10 + 1 + 3
    assert fsyncs.calls >= 7  # one per journal append
    assert manager.batch_get(["pos:0", "pos:1", "new:3", "pos:191", "pos:195"]) == {
        "pos:0": "hot",
        "pos:1": {"qty": 1001},
        "new:3": {"n": 3},
        "pos:195": "back",
    }

    postgres_cluster.start()
    wait_until(manager, "warm")

    assert "PostgreSQL recovery" in caplog.text and recoveries == ["postgres"]
    assert manager.status().journal_depth == 0
    stored = manager.warm.get_many(manager.warm.keys("*"))
    assert len(stored) == 200 - 10 + 1 + 30
    assert stored["pos:0"].version == 5 and stored["pos:0"].decoded() == "hot"
    assert stored["pos:1"].version == 2 and stored["pos:1"].decoded() == {"qty": 1001}
    assert stored["pos:100"].version == 1 and stored["new:29"].version == 1
    assert stored["pos:195"].version == 1 and "pos:191" not in stored
    assert "Match: True" in caplog.text
    assert_cache_equals_storage(manager)

    again = manager.journal.replay(manager.warm)  # a second replay applies nothing
    assert again.applied_entries == 0
    assert manager.warm.get_many(list(stored)) == stored


def test_reads_during_a_postgresql_outage_never_claim_a_stored_key_is_absent(
    redis_pg_manager: StateManager, postgres_cluster: Any, redis_url: str, tmp_path: Path
) -> None:
    manager = redis_pg_manager
    manager.batch_set({"cached": 1, "also": 2})
    other = StateManager(RedisCache(redis_url, prefix="other:"), manager.warm, journal=WriteJournal(tmp_path / "o"))
    assert other.get("cached") == 1  # this cache holds "cached" only
    manager.verify_coherence()  # the first manager verified its cache whole before the outage

    postgres_cluster.stop()

    assert manager.hot_complete and manager.get("never-written") is None
    assert manager.get_keys_by_pattern("*") == ["also", "cached"]
    assert other.get("cached") == 1  # served from its cache
    with pytest.raises(TierUnavailable, match="not cached"):
        other.get("also")
    with pytest.raises(TierUnavailable):
        other.get_keys_by_pattern("*")


def test_both_tiers_down_journals_writes_and_recovers_warm_then_hot(
    redis_pg_manager: StateManager, redis_server: Any, postgres_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    manager = redis_pg_manager
    manager.batch_set({f"k:{i}": i for i in range(20)})
    caplog.set_level(logging.INFO, logger="trader.state")

    postgres_cluster.stop()
    redis_server.stop()
    manager.batch_set({"k:0": "during", "k:new": "during"})  # journaled; the cache is down too
    assert manager.get("k:0") == "during"  # from the journal
    with pytest.raises(TierUnavailable, match="both state tiers are down"):
        manager.get("k:5")
    status = manager.status()
    assert not status.hot_up and not status.warm_up and status.journal_depth == 2

    postgres_cluster.start()
    redis_server.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while not (manager.status().warm_up and manager.status().hot_up):
        assert time.monotonic() < deadline, manager.status()
        with contextlib.suppress(TierUnavailable):
            manager.get("k:1")
        time.sleep(0.1)

    assert caplog.text.index("PostgreSQL recovery") < caplog.text.index("Recovered 21 keys to Redis")
    assert manager.warm.get_many(["k:0"])["k:0"].version == 2
    assert manager.batch_get(["k:0", "k:5", "k:new"]) == {"k:0": "during", "k:5": 5, "k:new": "during"}
    assert_cache_equals_storage(manager)


def test_unknown_versions_are_rebased_on_storage_at_replay(
    private_pg_url: str, postgres_cluster: Any, tmp_path: Path
) -> None:
    warm = SqlWarmStore(private_pg_url)
    first = StateManager(MemoryCache(), warm, journal=WriteJournal(tmp_path / "j"))
    for _ in range(4):
        first.set("k", "v")  # stored at version 4
    second = StateManager(MemoryCache(), warm, journal=WriteJournal(tmp_path / "j"))  # a restart: nothing cached

    postgres_cluster.stop()
    second.set("k", "during outage")
    second.set("k", "twice during outage")
    postgres_cluster.start()
    wait_until(second, "warm")

    record = warm.get_many(["k"])["k"]
    assert (record.decoded(), record.version) == ("twice during outage", 6)
    assert second.get_record("k") == record
    warm.dispose()


def test_a_replay_interrupted_by_a_crash_is_finished_by_the_next_start_without_double_apply(
    private_pg_url: str, postgres_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = SqlWarmStore(private_pg_url)
    journal_path = tmp_path / "journal.jsonl"
    manager = StateManager(MemoryCache(), warm, journal=WriteJournal(journal_path), batch_size=10)
    manager.batch_set({f"k:{i}": 0 for i in range(25)})
    postgres_cluster.stop()
    for round_ in (1, 2):
        manager.batch_set({f"k:{i}": round_ for i in range(25)})  # 50 entries: k:* at version 3
    postgres_cluster.start()

    crashed = WriteJournal(journal_path)
    real_marker = crashed._write_marker
    calls = {"n": 0}

    def crash_on_second_batch(seq: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # batch 2 is committed to PostgreSQL but its progress never recorded
            raise KeyboardInterrupt("process killed")
        real_marker(seq)

    monkeypatch.setattr(crashed, "_write_marker", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        crashed.replay(warm, batch_size=10)
    assert 0 < len(crashed.pending()) < 50

    restarted = StateManager(MemoryCache(), warm, journal=WriteJournal(journal_path), batch_size=10)
    wait_until(restarted, "warm")

    stored = warm.get_many([f"k:{i}" for i in range(25)])
    assert {(r.decoded(), r.version) for r in stored.values()} == {(2, 3)}
    assert restarted.journal.pending() == []
    assert restarted.batch_get(["k:0", "k:24"]) == {"k:0": 2, "k:24": 2}
    warm.dispose()


def test_data_loss_estimate_counts_from_last_warm_write_or_given_checkpoint(memory_manager: StateManager) -> None:
    clock = memory_manager.clock
    memory_manager.set("k", 1)
    clock.advance(30)  # type: ignore[attr-defined]

    assert memory_manager.data_loss_estimate() == pytest.approx(30, abs=0.01)
    checkpoint_at = clock() - timedelta(seconds=300)
    assert memory_manager.data_loss_estimate(checkpoint_at) == pytest.approx(300)


# --- the write journal on its own -------------------------------------------------------------------------------


class FlakyTier:
    """A real tier that goes unreachable on the chosen put_many call."""

    def __init__(self, inner: StorageTier, fail_on_put: int) -> None:
        self.inner, self.fail_on_put, self.puts, self.name = inner, fail_on_put, 0, inner.name

    def get_many(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        return self.inner.get_many(keys)

    def put_many(self, records: Sequence[StateRecord]) -> BatchResult:
        self.puts += 1
        if self.puts == self.fail_on_put:
            raise TierUnavailable("connection refused")
        return self.inner.put_many(records)

    def delete_many(self, keys: Sequence[str]) -> BatchResult:
        return self.inner.delete_many(keys)

    def keys(self, pattern: str = "*") -> list[str]:
        return self.inner.keys(pattern)

    def ping(self) -> bool:
        return True


def test_journal_appends_are_fsynced_and_pending_in_order(tmp_path: Path, fsyncs: CountingFsync, clock: Any) -> None:
    journal = WriteJournal(tmp_path / "j.jsonl")

    journal.append("set", "a", rec("a", 1, 1, clock))
    journal.append("delete", "a")
    journal.append_many([("set", "b", rec("b", 2, 1, clock), False), ("set", "c", rec("c", 3, 1, clock), False)])

    assert fsyncs.calls == 3
    assert [(e.seq, e.op, e.key) for e in WriteJournal(tmp_path / "j.jsonl").pending()] == [
        (1, "set", "a"),
        (2, "delete", "a"),
        (3, "set", "b"),
        (4, "set", "c"),
    ]


def test_journal_replay_applies_in_order_compacts_and_keeps_numbering(
    tmp_path: Path, sqlite_store: SqlWarmStore, clock: Any
) -> None:
    journal = WriteJournal(tmp_path / "j.jsonl")
    journal.append("set", "a", rec("a", 1, 1, clock))
    journal.append("set", "a", rec("a", 2, 2, clock))
    journal.append("set", "b", rec("b", 1, 1, clock))
    journal.append("delete", "b")

    result = journal.replay(sqlite_store, batch_size=3)

    assert result.applied_entries == 4 and result.last_seq == 4
    assert {k: (r.decoded(), r.version) for k, r in sqlite_store.get_many(["a", "b"]).items()} == {"a": (2, 2)}
    assert journal.path.read_text() == "" and journal.last_applied == 4
    assert WriteJournal(tmp_path / "j.jsonl").append("delete", "a").seq == 5


def test_journal_replay_interrupted_by_an_outage_resumes_without_double_apply(
    tmp_path: Path, sqlite_store: SqlWarmStore, clock: Any
) -> None:
    journal = WriteJournal(tmp_path / "j.jsonl")
    for version in range(1, 8):
        journal.append("set", "k", rec("k", version, version, clock))
    flaky = FlakyTier(sqlite_store, fail_on_put=2)

    with pytest.raises(TierUnavailable):
        journal.replay(flaky, batch_size=3)
    assert journal.last_applied == 3
    journal.replay(flaky, batch_size=3)
    journal.replay(flaky, batch_size=3)

    assert sqlite_store.get_many(["k"])["k"].version == 7
    assert journal.pending() == []


def test_a_torn_last_line_is_dropped_on_open(tmp_path: Path, clock: Any) -> None:
    path = tmp_path / "j.jsonl"
    WriteJournal(path).append("set", "a", rec("a", 1, 1, clock))
    with path.open("a") as handle:
        handle.write('{"seq":2,"op":"set","key":"b","val')  # crash mid-append: never acknowledged

    journal = WriteJournal(path)

    assert [e.key for e in journal.pending()] == ["a"]
    assert journal.append("delete", "a").seq == 2
    assert [e.seq for e in WriteJournal(path).pending()] == [1, 2]


class HalfCommittingTier(FlakyTier):
    """Commits the first half of a put, then loses the connection (a store splitting a call into statements)."""

    def __init__(self, inner: StorageTier) -> None:
        super().__init__(inner, fail_on_put=0)
        self.down = False
        self.failed_once = False

    def get_many(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        if self.down:
            raise TierUnavailable("connection refused")
        return self.inner.get_many(keys)

    def put_many(self, records: Sequence[StateRecord]) -> BatchResult:
        if self.down:
            raise TierUnavailable("connection refused")
        if self.failed_once:
            return self.inner.put_many(records)
        self.inner.put_many(records[: len(records) // 2])
        self.down = self.failed_once = True
        raise TierUnavailable("connection lost mid-batch")

    def ping(self) -> bool:
        return not self.down


def test_a_batch_half_committed_when_warm_fails_is_not_bumped_twice_at_replay(
    sqlite_store: SqlWarmStore, tmp_path: Path, clock: Any
) -> None:
    keys = [f"k:{i}" for i in range(10)]
    for version in (1, 2, 3):
        sqlite_store.put_many([rec(key, "old", version, clock) for key in keys])
    warm = HalfCommittingTier(sqlite_store)
    manager = StateManager(MemoryCache(), warm, journal=WriteJournal(tmp_path / "j"), clock=clock, probe_interval=0)

    result = manager.batch_set(dict.fromkeys(keys, "new"))  # nothing cached: versions come from warm
    assert sorted(result.stored) == keys and not manager.status().warm_up
    warm.down = False
    manager.get("k:0")

    stored = sqlite_store.get_many(keys)
    assert {(r.decoded(), r.version) for r in stored.values()} == {("new", 4)}
    assert manager.verify_coherence().match
