"""Property tests: partial batch failures never cache an unstored key; sequential and batch paths give
byte-identical caches; a warm outage (with restarts and a crash mid-replay) ends in the same storage as no outage."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trader.ledger.db import migrate
from trader.state.base import BatchResult, StateRecord, StorageTier, TierUnavailable
from trader.state.hot import MemoryCache
from trader.state.journal import WriteJournal
from trader.state.manager import StateManager
from trader.state.warm import SqlWarmStore

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = st.sampled_from([f"k:{i}" for i in range(12)])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
WRITES = st.dictionaries(KEYS, JSON, min_size=1, max_size=8)
DELETES = st.lists(KEYS, min_size=1, max_size=4, unique=True)
OPS = st.lists(st.tuples(st.sampled_from(["set", "delete"]), WRITES, DELETES), min_size=1, max_size=6)


def fixed_clock() -> datetime:
    return T0


class FaultyTier:
    """A real tier that refuses chosen keys, or is down altogether (TierUnavailable, ping False)."""

    def __init__(self, inner: StorageTier) -> None:
        self.inner = inner
        self.name = inner.name
        self.refuse: set[str] = set()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise TierUnavailable("connection refused")

    def get_many(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        self._check()
        return self.inner.get_many(keys)

    def put_many(self, records: Sequence[StateRecord]) -> BatchResult:
        self._check()
        result = self.inner.put_many([r for r in records if r.key not in self.refuse])
        result.failed.update({r.key: "refused" for r in records if r.key in self.refuse})
        return result

    def delete_many(self, keys: Sequence[str]) -> BatchResult:
        self._check()
        result = self.inner.delete_many([key for key in keys if key not in self.refuse])
        result.failed.update({key: "refused" for key in keys if key in self.refuse})
        return result

    def keys(self, pattern: str = "*") -> list[str]:
        self._check()
        return self.inner.keys(pattern)

    def ping(self) -> bool:
        return not self.down


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SqlWarmStore, SqlWarmStore]]:
    """Two migrated SQLite warm stores, shared by a module's examples (each example clears them)."""
    folder = tmp_path_factory.mktemp("props")
    made = []
    for name in ("a", "b"):
        url = f"sqlite:///{(folder / f'{name}.db').as_posix()}"
        migrate(url)
        made.append(SqlWarmStore(url, batch_size=5))
    yield made[0], made[1]
    for store in made:
        store.dispose()


@pytest.fixture(scope="module")
def journal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("journals")


def fresh_journal(folder: Path) -> WriteJournal:
    for leftover in folder.iterdir():
        leftover.unlink()
    return WriteJournal(folder / "journal.jsonl")


@PROPERTY_SETTINGS
@given(ops=OPS, refused=st.lists(st.sets(KEYS, max_size=6), min_size=6, max_size=6), batch_size=st.integers(1, 6))
def test_partial_batch_failures_never_cache_an_unstored_key(
    stores: tuple[SqlWarmStore, SqlWarmStore],
    journal_dir: Path,
    ops: list[Any],
    refused: list[set[str]],
    batch_size: int,
) -> None:
    store = stores[0]
    store.clear()
    warm = FaultyTier(store)
    hot = MemoryCache()
    manager = StateManager(hot, warm, journal=fresh_journal(journal_dir), batch_size=batch_size, clock=fixed_clock)

    for (op, writes, deletes), refuse in zip(ops, refused, strict=False):
        warm.refuse = refuse
        before = store.get_many(list(writes) + deletes)
        result = manager.batch_set(writes) if op == "set" else manager.batch_delete(deletes)
        touched = list(writes) if op == "set" else deletes
        after = store.get_many(touched)

        assert set(result.failed) == set(touched) & refuse
        assert set(result.stored) == set(touched) - refuse
        for key in result.failed:  # storage unchanged, and the cache holds only what storage holds
            assert after.get(key) == before.get(key)
        cached = hot.get_many(hot.keys())
        assert all(store.get_many([key]).get(key) == record for key, record in cached.items())
        assert manager.verify_coherence().coherent


@PROPERTY_SETTINGS
@given(ops=OPS, batch_size=st.integers(1, 6))
def test_sequential_and_batch_paths_give_byte_identical_caches(
    stores: tuple[SqlWarmStore, SqlWarmStore], journal_dir: Path, ops: list[Any], batch_size: int
) -> None:
    for store in stores:
        store.clear()
    journal = fresh_journal(journal_dir)
    sequential = StateManager(MemoryCache(), stores[0], journal=journal, batch_size=batch_size, clock=fixed_clock)
    batched = StateManager(MemoryCache(), stores[1], journal=journal, batch_size=batch_size, clock=fixed_clock)

    for op, writes, deletes in ops:
        if op == "set":
            for key, value in writes.items():
                sequential.set(key, value)
            batched.batch_set(writes)
        else:
            for key in deletes:
                sequential.delete(key)
            batched.batch_delete(deletes)

    keys = sorted(set(sequential.hot.keys()) | set(batched.hot.keys()))
    assert sequential.hot.get_many(keys) == batched.hot.get_many(keys)
    all_keys = sorted(set(stores[0].keys()) | set(stores[1].keys()))
    assert stores[0].get_many(all_keys) == stores[1].get_many(all_keys)


@PROPERTY_SETTINGS
@given(
    before=OPS,
    during=OPS,
    restart_at=st.integers(0, 6),
    crash_at=st.one_of(st.none(), st.integers(1, 4)),
    batch_size=st.integers(1, 6),
)
def test_a_warm_outage_ends_in_the_same_storage_as_no_outage(
    stores: tuple[SqlWarmStore, SqlWarmStore],
    tmp_path_factory: pytest.TempPathFactory,
    before: list[Any],
    during: list[Any],
    restart_at: int,
    crash_at: int | None,
    batch_size: int,
) -> None:
    for store in stores:
        store.clear()
    folder = tmp_path_factory.mktemp("outage")
    reference = StateManager(
        MemoryCache(), stores[1], journal=WriteJournal(folder / "ref"), batch_size=batch_size, clock=fixed_clock
    )
    warm = FaultyTier(stores[0])
    journal_path = folder / "journal.jsonl"

    def start() -> StateManager:
        journal = WriteJournal(journal_path)
        return StateManager(
            MemoryCache(), warm, journal=journal, batch_size=batch_size, clock=fixed_clock, probe_interval=0
        )

    def apply(manager: StateManager, op: str, writes: dict[str, Any], deletes: list[str]) -> None:
        if op == "set":
            manager.batch_set(writes)
        else:
            manager.batch_delete(deletes)

    manager = start()
    for op in before:
        apply(manager, *op)
        apply(reference, *op)
    warm.down = True
    for index, op in enumerate(during):
        if index == restart_at:
            manager = start()  # a restart during the outage: nothing cached, versions rebased at replay
        apply(manager, *op)
        apply(reference, *op)
    warm.down = False

    if crash_at is not None:
        crashing = WriteJournal(journal_path)
        real_marker, calls = crashing._write_marker, [0]

        def crash(seq: int) -> None:
            calls[0] += 1
            if calls[0] == crash_at:
                raise KeyboardInterrupt("killed after the batch committed")
            real_marker(seq)

        crashing._write_marker = crash  # type: ignore[method-assign]
        with contextlib.suppress(KeyboardInterrupt):
            crashing.replay(warm, batch_size)
    manager = start()
    manager.get("probe")  # recovers the warm tier: replays what is left of the journal

    assert manager.status().warm_up and manager.journal.pending() == []
    keys = sorted(set(stores[0].keys()) | set(stores[1].keys()))
    assert stores[0].get_many(keys) == stores[1].get_many(keys)
