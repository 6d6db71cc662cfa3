"""The StateManager's cold tier for keys: archive moves keys out of Redis/PostgreSQL into one verified object
(a folder, or S3 on a moto server), restore_archive brings them back; nothing is lost on a failed upload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from trader.state.archive import ArchiveCorrupt
from trader.state.base import ObjectStore, TierUnavailable
from trader.state.cold import LocalFolderStore, S3Store
from trader.state.hot import RedisCache
from trader.state.journal import WriteJournal
from trader.state.manager import StateManager
from trader.state.warm import SqlWarmStore

if TYPE_CHECKING:
    from tests.state.cold.conftest import MotoS3


@pytest.fixture
def warm(pg_url: str) -> Iterator[SqlWarmStore]:
    store = SqlWarmStore(pg_url, 100)
    store.ensure_schema()
    store.clear()
    yield store
    store.clear()
    store.dispose()


def manager_on(cold: ObjectStore, warm: SqlWarmStore, tmp_path: Path) -> StateManager:
    hot = RedisCache("redis://127.0.0.1:6379/13", prefix=f"archive-test:{tmp_path.name}:")
    hot.clear()
    return StateManager(hot, warm, journal=WriteJournal(tmp_path / "journal.jsonl"), batch_size=100, cold=cold)


def archive_round_trip(manager: StateManager) -> None:
    old = {f"fills:2026-10:{i:04d}": {"trade": i, "price": f"{60000 + i}.5", "note": "é"} for i in range(250)}
    live = {"bot:positions": {"BTC-USD": "0.1"}}
    manager.batch_set({**old, **live})

    info = manager.archive("fills:2026-10:*")

    assert info is not None and info.keys == 250
    assert manager.get_keys_by_pattern("fills:*") == []  # gone from warm and hot
    assert manager.get("bot:positions") == live["bot:positions"]  # the rest untouched
    assert manager.cold is not None and [a.name for a in manager.cold.list()] == [info.name]
    assert manager.restore_archive(info.name) == 250
    assert manager.batch_get(old) == old
    assert manager.verify_coherence().coherent


def test_archive_to_a_folder_and_back(warm: SqlWarmStore, tmp_path: Path) -> None:
    archive_round_trip(manager_on(LocalFolderStore(tmp_path / "cold"), warm, tmp_path))


def test_archive_to_s3_and_back(moto_s3: MotoS3, warm: SqlWarmStore, tmp_path: Path) -> None:
    cold = S3Store(moto_s3.url("archive-test"), endpoint_url=moto_s3.endpoint)
    archive_round_trip(manager_on(cold, warm, tmp_path))
    assert any(k.endswith(".jsonl.gz") for k in moto_s3.keys("archive-test/state/archive/"))


def test_a_failed_upload_deletes_nothing(s3_outage: MotoS3, warm: SqlWarmStore, tmp_path: Path) -> None:
    manager = manager_on(S3Store(s3_outage.url(), endpoint_url=s3_outage.endpoint), warm, tmp_path)
    manager.batch_set({f"old:{i}": i for i in range(20)})
    s3_outage.stop()

    with pytest.raises(TierUnavailable):
        manager.archive("old:*")

    assert manager.batch_get([f"old:{i}" for i in range(20)]) == {f"old:{i}": i for i in range(20)}


def test_a_corrupt_archive_is_refused_and_nothing_is_written(warm: SqlWarmStore, tmp_path: Path) -> None:
    cold = LocalFolderStore(tmp_path / "cold")
    manager = manager_on(cold, warm, tmp_path)
    manager.batch_set({f"old:{i}": i for i in range(20)})
    info = manager.archive("old:*")
    assert info is not None
    path = tmp_path / "cold" / f"state/archive/{info.name}.jsonl.gz"
    path.write_bytes(path.read_bytes()[:-10])  # truncated

    with pytest.raises(ArchiveCorrupt, match=f"archive {info.name} is corrupt"):
        manager.restore_archive(info.name)

    assert manager.get_keys_by_pattern("old:*") == []
