"""The tiers on their own: MemoryCache and RedisCache (private redis-server), SqlWarmStore on SQLite and on the
shared PostgreSQL."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from trader.state.base import StateRecord, TierUnavailable, checksum, encode_value
from trader.state.hot import MemoryCache, RedisCache, glob_match, pack_record, unpack_record
from trader.state.warm import SqlWarmStore, _like_superset

T0 = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def record(key: str, value: Any, version: int = 1, at: datetime = T0) -> StateRecord:
    data = encode_value(value)
    return StateRecord(key=key, value=data, checksum=checksum(data), version=version, updated_at=at)


@pytest.fixture(params=["memory", "redis"])
def hot(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryCache()
    return request.getfixturevalue("redis_cache")


@pytest.fixture(params=["sqlite", "postgresql"])
def warm(request: pytest.FixtureRequest) -> SqlWarmStore:
    return request.getfixturevalue("sqlite_store" if request.param == "sqlite" else "shared_pg_store")


PATTERN_KEYS = ["order:1", "order:2", "order:10", "Order:3", "position:BTC-USD", "pos_x", "pos%y", "a*b", "a?b"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", sorted(PATTERN_KEYS)),
        ("order:*", ["order:1", "order:10", "order:2"]),
        ("order:?", ["order:1", "order:2"]),
        ("[oO]rder:[13]", ["Order:3", "order:1"]),
        ("order:[^1]", ["order:2"]),
        ("pos_*", ["pos_x"]),
        ("pos%*", ["pos%y"]),
        (r"a\*b", ["a*b"]),
        ("a?b", ["a*b", "a?b"]),
        ("position:*-USD", ["position:BTC-USD"]),
        ("nothing:*", []),
    ],
)
def test_keys_match_redis_glob_semantics_on_every_tier(
    hot: Any, warm: SqlWarmStore, pattern: str, expected: list[str]
) -> None:
    records = [record(key, {"k": key}) for key in PATTERN_KEYS]
    hot.put_many(records)
    warm.put_many(records)

    assert sorted(hot.keys(pattern)) == expected
    assert sorted(warm.keys(pattern)) == expected
    assert sorted(key for key in PATTERN_KEYS if glob_match(pattern, key)) == expected


def test_like_superset_escapes_sql_wildcards_and_widens_classes() -> None:
    assert _like_superset("pos_*") == "pos\\_%"
    assert _like_superset("a[bc]d?") == "a_d_"
    assert _like_superset(r"a\*b%") == "a*b\\%"


def test_hot_tier_round_trips_records_exactly(hot: Any) -> None:
    stored = [record("k:1", {"a": 1, "s": "x:y:z"}, version=3), record("k:2", [1, 2, "é"], version=1)]

    result = hot.put_many(stored)
    found = hot.get_many(["k:1", "k:2", "k:missing"])

    assert result.ok and result.stored == ["k:1", "k:2"]
    assert found == {"k:1": stored[0], "k:2": stored[1]}
    assert all(r.intact for r in found.values())


def test_hot_tier_deletes_and_clears(hot: Any) -> None:
    hot.put_many([record(f"k:{i}", i) for i in range(5)])

    hot.delete_many(["k:0", "k:1"])
    assert sorted(hot.keys()) == ["k:2", "k:3", "k:4"]
    hot.clear()
    assert hot.keys() == []


def test_memory_cache_evicts_the_least_recently_used_key() -> None:
    cache = MemoryCache(max_keys=3)
    cache.put_many([record("a", 1), record("b", 2), record("c", 3)])
    cache.get_many(["a"])  # a is now the most recently used

    cache.put_many([record("d", 4)])

    assert sorted(cache.keys()) == ["a", "c", "d"]


def test_redis_packing_keeps_value_checksum_version_and_microseconds() -> None:
    original = record("x", {"text": "a:b:c"}, version=42, at=T0 + timedelta(microseconds=7))
    assert unpack_record("x", pack_record(original)) == original


def test_redis_cache_keeps_other_prefixes_apart(redis_url: str) -> None:
    first, second = RedisCache(redis_url, prefix="one:"), RedisCache(redis_url, prefix="two:")
    first.put_many([record("k", 1)])
    second.put_many([record("k", 2)])

    first.clear()

    assert first.keys() == [] and second.get_many(["k"])["k"].decoded() == 2


def test_unreachable_redis_raises_tier_unavailable_quickly() -> None:
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    started = time.monotonic()

    assert cache.ping() is False
    with pytest.raises(TierUnavailable):
        cache.get_many(["k"])
    with pytest.raises(TierUnavailable):
        cache.put_many([record("k", 1)])
    assert time.monotonic() - started < 10


def test_warm_tier_round_trips_records_exactly(warm: SqlWarmStore) -> None:
    stored = [record("k:1", {"a": [1, 2]}, version=5), record("k:2", "é", version=1, at=T0 + timedelta(days=1))]

    assert warm.put_many(stored).stored == ["k:1", "k:2"]
    assert warm.get_many(["k:1", "k:2", "k:3"]) == {"k:1": stored[0], "k:2": stored[1]}


def test_warm_tier_upsert_replaces_value_and_version(warm: SqlWarmStore) -> None:
    warm.put_many([record("k", 1, version=1)])

    warm.put_many([record("k", 2, version=2)])

    found = warm.get_many(["k"])["k"]
    assert (found.decoded(), found.version) == (2, 2)


def test_warm_tier_writes_one_statement_per_batch(warm: SqlWarmStore) -> None:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            statements.append(statement)

    event.listen(warm.engine, "before_cursor_execute", count)
    try:
        result = warm.put_many([record(f"k:{i:03d}", i) for i in range(120)])  # batch_size 50
    finally:
        event.remove(warm.engine, "before_cursor_execute", count)

    assert len(result.stored) == 120
    assert len(statements) == 3
    assert "ON CONFLICT" in statements[0].upper()
    assert len(warm.get_many([f"k:{i:03d}" for i in range(120)])) == 120


def test_warm_tier_deletes_in_batches(warm: SqlWarmStore) -> None:
    warm.put_many([record(f"k:{i}", i) for i in range(60)])

    result = warm.delete_many([f"k:{i}" for i in range(55)])

    assert len(result.stored) == 55
    assert sorted(warm.keys()) == sorted(f"k:{i}" for i in range(55, 60))


def test_postgresql_refuses_a_bad_batch_and_keeps_the_others(shared_pg_store: SqlWarmStore) -> None:
    good = [record(f"ok:{i}", i) for i in range(50)]
    bad = [record("x" * 600, 1)] + [record(f"late:{i}", i) for i in range(49)]  # key longer than String(512)

    result = shared_pg_store.put_many(good + bad)

    assert sorted(result.stored) == sorted(r.key for r in good)
    assert set(result.failed) == {r.key for r in bad}
    assert sorted(shared_pg_store.keys()) == sorted(r.key for r in good)


def test_unreachable_postgresql_raises_tier_unavailable() -> None:
    store = SqlWarmStore(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/none", batch_size=10)

    assert store.ping() is False
    with pytest.raises(TierUnavailable, match="unreachable"):
        store.get_many(["k"])
    with pytest.raises(TierUnavailable):
        store.put_many([record("k", 1)])
    with pytest.raises(TierUnavailable):
        store.keys("*")


def test_warm_tier_reads_versions_without_values(warm: SqlWarmStore) -> None:
    warm.put_many([record("a", 1, version=3), record("b", 2, version=1)])

    assert warm.versions(["a", "b", "c"]) == {"a": 3, "b": 1}
