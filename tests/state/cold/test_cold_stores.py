"""The two cold stores behave the same: a local folder and S3 (moto server)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.state.cold.conftest import MotoS3
from trader.errors import ConfigError
from trader.settings import Settings
from trader.state.base import ObjectStore, TierUnavailable
from trader.state.cold import (
    ColdStorageError,
    FallbackObjectStore,
    LocalFolderStore,
    ObjectNotFound,
    S3Store,
    cold_store_from_settings,
)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalFolderStore(tmp_path / "cold")
    server: MotoS3 = request.getfixturevalue("moto_s3")
    return S3Store(server.url(), endpoint_url=server.endpoint)


def test_put_get_round_trips_bytes(store: ObjectStore) -> None:
    data = bytes(range(256)) * 10

    uri = store.put("checkpoints/a.json.gz", data)

    assert store.get("checkpoints/a.json.gz") == data
    assert uri.endswith("checkpoints/a.json.gz")


def test_put_overwrites_an_existing_name(store: ObjectStore) -> None:
    store.put("exports/state.json", b"old")
    store.put("exports/state.json", b"new")

    assert store.get("exports/state.json") == b"new"


def test_list_filters_by_prefix_and_is_sorted(store: ObjectStore) -> None:
    for name in ("checkpoints/b.json", "checkpoints/a.json", "backups/x.tar", "checkpointsextra.json"):
        store.put(name, b"1")

    assert store.list("checkpoints/") == ["checkpoints/a.json", "checkpoints/b.json"]
    assert store.list() == ["backups/x.tar", "checkpoints/a.json", "checkpoints/b.json", "checkpointsextra.json"]


def test_delete_removes_and_is_idempotent(store: ObjectStore) -> None:
    store.put("logs/1.log", b"x")

    store.delete("logs/1.log")
    store.delete("logs/1.log")

    assert store.list("logs/") == []


def test_missing_object_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="no object checkpoints/nope.json"):
        store.get("checkpoints/nope.json")


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", ".hidden", "a\\b", "a/"])
def test_unsafe_names_are_refused(store: ObjectStore, name: str) -> None:
    with pytest.raises(ColdStorageError, match="invalid"):
        store.put(name, b"x")


def test_ping_answers_when_reachable(store: ObjectStore) -> None:
    assert store.ping() is True


def test_local_write_leaves_no_temp_files_and_is_a_single_file(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "cold")

    store.put("checkpoints/a.json", b"payload")

    files = sorted(p.relative_to(tmp_path / "cold").as_posix() for p in (tmp_path / "cold").rglob("*") if p.is_file())
    assert files == ["checkpoints/a.json"]
    assert store.list() == ["checkpoints/a.json"]


def test_s3_objects_land_under_the_url_prefix(moto_s3: MotoS3) -> None:
    store = S3Store(moto_s3.url("gpt-trader/cold"), endpoint_url=moto_s3.endpoint)

    uri = store.put("checkpoints/a.json", b"abc")

    assert moto_s3.keys() == ["gpt-trader/cold/checkpoints/a.json"]
    assert uri == f"s3://{moto_s3.bucket}/gpt-trader/cold/checkpoints/a.json"
    assert moto_s3.read("gpt-trader/cold/checkpoints/a.json") == b"abc"


def test_s3_outage_is_reported_fast_as_tier_unavailable(s3_outage: MotoS3) -> None:
    store = S3Store(s3_outage.url(), endpoint_url=s3_outage.endpoint)
    store.put("a.json", b"1")
    s3_outage.stop()

    started = time.monotonic()
    with pytest.raises(TierUnavailable, match="S3 put b.json"):
        store.put("b.json", b"2")
    with pytest.raises(TierUnavailable):
        store.get("a.json")
    with pytest.raises(TierUnavailable):
        store.list()

    assert store.ping() is False
    assert time.monotonic() - started < 15


def test_s3_store_answers_again_after_the_server_returns(s3_outage: MotoS3) -> None:
    store = S3Store(s3_outage.url(), endpoint_url=s3_outage.endpoint)
    store.put("a.json", b"1")
    s3_outage.stop()
    assert store.ping() is False

    s3_outage.start()

    assert store.ping() is True
    assert store.get("a.json") == b"1"


def test_settings_pick_a_local_folder_by_default(tmp_path: Path) -> None:
    settings = Settings(STATE_DIR=tmp_path / "state")

    store = cold_store_from_settings(settings)

    assert isinstance(store, LocalFolderStore)
    assert store.root == tmp_path / "state" / "cold"


def test_settings_pick_s3_behind_a_local_fallback(tmp_path: Path, moto_s3: MotoS3) -> None:
    settings = Settings(
        STATE_DIR=tmp_path / "state", COLD_STORAGE_URL=moto_s3.url(), COLD_STORAGE_ENDPOINT_URL=moto_s3.endpoint
    )

    store = cold_store_from_settings(settings)
    raw = cold_store_from_settings(settings, fallback=False)

    assert isinstance(store, FallbackObjectStore) and isinstance(store.primary, S3Store)
    assert store.fallback_dir == tmp_path / "state" / "cold_fallback"
    assert isinstance(raw, S3Store)
    store.put("x.json", b"1")
    assert raw.get("x.json") == b"1"


@pytest.mark.parametrize("url", ["s3://", "gs://bucket/x"])
def test_settings_refuse_a_cold_url_they_cannot_serve(tmp_path: Path, url: str) -> None:
    settings = Settings(STATE_DIR=tmp_path, COLD_STORAGE_URL=url)

    with pytest.raises(ConfigError, match="COLD_STORAGE_URL"):
        cold_store_from_settings(settings)


def test_a_write_that_fails_midway_leaves_the_old_object_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalFolderStore(tmp_path / "cold")
    store.put("checkpoints/a.json", b"old and whole")

    def crash(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("trader.state.cold.os.replace", crash)
    with pytest.raises(ColdStorageError, match="No space left on device"):
        store.put("checkpoints/a.json", b"new")

    assert store.get("checkpoints/a.json") == b"old and whole"
    assert store.list() == ["checkpoints/a.json"]
    assert list((tmp_path / "cold" / ".tmp").iterdir()) == []
