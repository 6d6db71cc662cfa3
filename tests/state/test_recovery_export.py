"""The cache-restore export path: SqlWarmStore.iter_rows/iter_all, RedisCache.put_rows, recover_hot on top."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from trader.state.base import StateRecord, checksum, encode_value
from trader.state.hot import MSET_CHUNK, MemoryCache, RedisCache, pack_record, record_row, rows_to_records
from trader.state.journal import WriteJournal
from trader.state.manager import StateManager, _read_ahead
from trader.state.warm import SqlWarmStore

T0 = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)


def record(key: str, value: Any, version: int = 1, at: datetime = T0) -> StateRecord:
    data = encode_value(value)
    return StateRecord(key=key, value=data, checksum=checksum(data), version=version, updated_at=at)


def raw_record(key: str, data: bytes, version: int = 1, at: datetime = T0) -> StateRecord:
    return StateRecord(key=key, value=data, checksum=checksum(data), version=version, updated_at=at)


@pytest.fixture(params=["sqlite", "postgresql"])
def warm(request: pytest.FixtureRequest) -> SqlWarmStore:
    return request.getfixturevalue("sqlite_store" if request.param == "sqlite" else "shared_pg_store")


def some_records(n: int) -> list[StateRecord]:
    # Distinct instants (some before the epoch's second boundary), versions and non-ASCII values.
    return [
        record(f"k:{i:03d}", {"i": i, "name": "é" * (i % 3)}, version=1 + i % 4, at=T0 + timedelta(microseconds=7 * i))
        for i in range(n)
    ]


def test_iter_rows_exports_every_record_exactly_once_in_pages(warm: SqlWarmStore) -> None:
    stored = some_records(23)
    warm.put_many(stored)

    pages = list(warm.iter_rows(page_size=5))

    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    exported = {record.key: record for page in pages for record in rows_to_records(page)}
    assert exported == {record.key: record for record in stored}
    assert all(row[4] == record_row(exported[row[0]])[4] for page in pages for row in page)


def test_iter_all_yields_the_records_get_many_reads(warm: SqlWarmStore) -> None:
    stored = some_records(10)
    warm.put_many(stored)

    records = [record for page in warm.iter_all(page_size=10) for record in page]

    assert len(records) == 10  # a full last page is followed by an empty read, never an empty page
    assert {record.key: record for record in records} == warm.get_many([record.key for record in stored])


def test_iter_rows_of_an_empty_store_yields_nothing(warm: SqlWarmStore) -> None:
    assert list(warm.iter_rows()) == []


def test_a_value_that_is_not_utf8_is_exported_as_bytes_without_duplicates(shared_pg_store: SqlWarmStore) -> None:
    stored = [*some_records(12), raw_record("k:bad", b"\xff\xfe not utf-8")]
    for start in range(0, len(stored), 4):  # the bad row last in storage order: the text scan fails late
        shared_pg_store.put_many(stored[start : start + 4])

    rows = [row for page in shared_pg_store.iter_rows(page_size=4) for row in page]

    assert sorted(row[0] for row in rows) == sorted(record.key for record in stored)
    assert {record.key: record for record in rows_to_records(rows)} == {record.key: record for record in stored}


def test_put_rows_stores_what_put_many_stores(redis_cache: RedisCache) -> None:
    text, binary = record("text", {"a": "é"}, version=3), raw_record("bin", b"\x00:\xff", version=2)
    rows = [
        (text.key, text.value.decode(), text.checksum, 3, record_row(text)[4]),
        (binary.key, memoryview(binary.value), binary.checksum, 2, record_row(binary)[4]),
    ]

    assert redis_cache.put_rows(rows).stored == ["text", "bin"]
    assert redis_cache.get_many(["text", "bin"]) == {"text": text, "bin": binary}
    raw = redis.Redis.from_url(redis_cache.url)
    assert raw.get("state:text") == pack_record(text)
    raw.close()

    before_epoch = record("old", 1, at=datetime(1969, 7, 20, 20, 17, 40, 5, tzinfo=UTC))
    redis_cache.put_many([before_epoch])
    assert redis_cache.get_many(["old"]) == {"old": before_epoch}


def test_put_rows_sends_many_chunks_and_keeps_the_connection_in_step(redis_cache: RedisCache) -> None:
    records = [record(f"k:{i}", i) for i in range(3 * MSET_CHUNK + 7)]

    assert len(redis_cache.put_rows([record_row(r) for r in records]).stored) == len(records)
    assert redis_cache.get_many([r.key for r in records]) == {r.key: r for r in records}
    raw = redis.Redis.from_url(redis_cache.url)
    raw.set("state:wrong", "x")
    raw.close()
    with pytest.raises(redis.ResponseError):
        redis_cache._pipeline(iter([b"*2\r\n$4\r\nINCR\r\n$11\r\nstate:wrong\r\n", b"*1\r\n$4\r\nPING\r\n"]))
    assert redis_cache.ping() and redis_cache.get_many(["k:0"]) == {"k:0": records[0]}


def test_put_rows_reconnects_once_when_redis_dropped_the_pooled_connection(redis_cache: RedisCache) -> None:
    redis_cache.put_many([record("a", 1)])
    admin = redis.Redis.from_url(redis_cache.url)
    admin.client_kill_filter(_type="normal", skipme=True)  # as a Redis restart would leave the pool
    admin.close()

    assert redis_cache.put_many([record("b", 2)]).stored == ["b"]
    assert sorted(redis_cache.get_many(["a", "b"])) == ["a", "b"]


def test_recover_hot_restores_every_key_and_drops_stale_extras_on_redis(
    redis_cache: RedisCache, shared_pg_store: SqlWarmStore, tmp_path: Path
) -> None:
    manager = StateManager(redis_cache, shared_pg_store, journal=WriteJournal(tmp_path / "j"), batch_size=7)
    manager.batch_set({f"k:{i}": {"i": i} for i in range(30)})
    redis_cache.clear()
    redis_cache.put_many([record("gone", "stale"), record("k:3", "stale", version=9)])

    assert manager.recover_hot() == 30

    assert redis_cache.keys("*") == sorted(f"k:{i}" for i in range(30))
    assert redis_cache.get_many(["k:3"])["k:3"].decoded() == {"i": 3}
    assert manager.status().trusted_keys == 30 and manager.hot_complete
    assert manager.verify_coherence().match


def test_recover_hot_falls_back_to_keys_and_reads_for_other_tiers(sqlite_store: SqlWarmStore, tmp_path: Path) -> None:
    class PlainTier:
        """Only the StorageTier protocol: no iter_rows nor iter_all."""

        name = "plain"

        def __init__(self, inner: SqlWarmStore) -> None:
            self.get_many, self.put_many, self.delete_many = inner.get_many, inner.put_many, inner.delete_many
            self.keys, self.ping = inner.keys, inner.ping

    hot = MemoryCache()
    manager = StateManager(hot, PlainTier(sqlite_store), journal=WriteJournal(tmp_path / "j"), batch_size=4)
    manager.batch_set({f"k:{i}": i for i in range(10)})
    hot.clear()
    hot.put_many([record("gone", 1)])

    assert manager.recover_hot() == 10
    assert sorted(hot.keys()) == sorted(f"k:{i}" for i in range(10))
    assert manager.verify_coherence().match


def test_read_ahead_reads_the_next_page_in_a_worker_and_closes_its_source() -> None:
    readers: list[str] = []
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            for page in range(5):
                readers.append(threading.current_thread().name)
                yield page
        finally:
            closed.set()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reader") as worker:
        pages = _read_ahead(source(), lambda: worker)
        assert [next(pages), next(pages), next(pages)] == [0, 1, 2]
        pages.close()

    assert closed.is_set()
    assert readers[:2] == [threading.current_thread().name] * 2  # a small source never involves the worker
    assert len(readers) == 4 and all(name.startswith("reader") for name in readers[2:])  # page 3 read ahead


def test_read_ahead_passes_a_source_error_on() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise RuntimeError("lost")

    with ThreadPoolExecutor(max_workers=1) as worker:
        pages = _read_ahead(source(), lambda: worker)
        assert next(pages) == 1
        with pytest.raises(RuntimeError, match="lost"):
            next(pages)
