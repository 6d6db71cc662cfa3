"""Whole files to and from the cold tier in chunks, on both real stores (a local folder and S3 on moto): what
backups stream through `put_file`, `digest` and `get_file`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.state.cold.conftest import MotoS3
from trader.state.base import TierUnavailable
from trader.state.cold import FileDigest, LocalFolderStore, ObjectNotFound, S3Store, StreamingObjectStore

CHUNK = 5 * 2**20  # S3's smallest multipart part


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StreamingObjectStore:
    if request.param == "local":
        return LocalFolderStore(tmp_path / "cold")
    server: MotoS3 = request.getfixturevalue("moto_s3")
    return S3Store(server.url(), endpoint_url=server.endpoint)


def a_file(tmp_path: Path, size: int, name: str = "dump.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


class Interrupted(Exception):
    pass


def test_put_file_streams_in_chunks_and_every_read_sees_the_same_bytes(
    store: StreamingObjectStore, tmp_path: Path
) -> None:
    path, data = a_file(tmp_path, 2 * CHUNK + 12345)  # two full chunks and a short last one
    uploaded: list[tuple[int, int]] = []
    read_back: list[tuple[int, int]] = []

    uri = store.put_file("backups/daily/a.dump", path, chunk_size=CHUNK, on_progress=lambda *p: uploaded.append(p))
    digest = store.digest("backups/daily/a.dump", chunk_size=CHUNK, on_progress=lambda *p: read_back.append(p))
    copy = tmp_path / "restored.bin"
    downloaded = store.get_file("backups/daily/a.dump", copy, chunk_size=CHUNK)

    expected = FileDigest(hashlib.sha256(data).hexdigest(), len(data))
    assert uri.endswith("backups/daily/a.dump")
    assert store.get("backups/daily/a.dump") == data
    assert digest == expected and downloaded == expected
    assert copy.read_bytes() == data
    assert uploaded == [(CHUNK, len(data)), (2 * CHUNK, len(data)), (len(data), len(data))]
    assert read_back == uploaded
    assert store.list() == ["backups/daily/a.dump"]


def test_put_file_replaces_an_existing_object_whole(store: StreamingObjectStore, tmp_path: Path) -> None:
    store.put("exports/state.bin", b"old and longer than the new one")
    path, data = a_file(tmp_path, 1000)

    store.put_file("exports/state.bin", path)

    assert store.get("exports/state.bin") == data


def test_reading_a_missing_object_raises_before_creating_the_target_file(
    store: StreamingObjectStore, tmp_path: Path
) -> None:
    target = tmp_path / "restored.bin"

    with pytest.raises(ObjectNotFound, match="no object backups/none.dump"):
        store.get_file("backups/none.dump", target)
    with pytest.raises(ObjectNotFound):
        store.digest("backups/none.dump")

    assert not target.exists()


def test_an_upload_interrupted_midway_leaves_the_old_object_and_no_partial_one(
    store: StreamingObjectStore, tmp_path: Path
) -> None:
    store.put("backups/daily/a.dump", b"the verified one")
    path, _ = a_file(tmp_path, 2 * CHUNK + 1)

    def die_after_the_first_chunk(done: int, _total: int) -> None:
        raise Interrupted(f"killed after {done} bytes")

    with pytest.raises(Interrupted):
        store.put_file("backups/daily/a.dump", path, chunk_size=CHUNK, on_progress=die_after_the_first_chunk)

    assert store.get("backups/daily/a.dump") == b"the verified one"
    assert store.list() == ["backups/daily/a.dump"]


def test_local_put_file_leaves_no_temp_file_in_the_store(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "cold")
    path, _ = a_file(tmp_path, 3000)

    store.put_file("backups/daily/a.dump", path, chunk_size=1024)
    with pytest.raises(Interrupted):
        store.put_file("backups/daily/b.dump", path, chunk_size=1024, on_progress=_interrupt)

    assert list((tmp_path / "cold" / ".tmp").iterdir()) == []
    assert store.list() == ["backups/daily/a.dump"]


def _interrupt(_done: int, _total: int) -> None:
    raise Interrupted


def test_s3_multipart_upload_is_aborted_when_interrupted(moto_s3: MotoS3, tmp_path: Path) -> None:
    store = S3Store(moto_s3.url(), endpoint_url=moto_s3.endpoint)
    path, _ = a_file(tmp_path, CHUNK + 1)  # two parts: interrupted after the first

    with pytest.raises(Interrupted):
        store.put_file("backups/daily/a.dump", path, chunk_size=CHUNK, on_progress=_interrupt)

    assert moto_s3.client().list_multipart_uploads(Bucket=moto_s3.bucket).get("Uploads", []) == []
    assert moto_s3.keys() == []


def test_s3_put_file_during_an_outage_is_tier_unavailable(s3_outage: MotoS3, tmp_path: Path) -> None:
    store = S3Store(s3_outage.url(), endpoint_url=s3_outage.endpoint)
    path, _ = a_file(tmp_path, 100)
    s3_outage.stop()

    with pytest.raises(TierUnavailable, match="S3 put backups/daily/a.dump"):
        store.put_file("backups/daily/a.dump", path)
    with pytest.raises(TierUnavailable, match="S3 get backups/daily/a.dump"):
        store.digest("backups/daily/a.dump")
