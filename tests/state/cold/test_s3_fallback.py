"""A real S3 outage mid-run (the moto server stopped): objects go to the local fallback and a queue on disk,
system:s3_available goes false; when S3 is back the queue is synced and every object reads back byte-identical."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from tests.state.cold.conftest import MotoS3
from trader.state.base import TierUnavailable
from trader.state.checkpoints import CheckpointStore
from trader.state.cold import FallbackObjectStore, ObjectNotFound, S3Store

PREFIX = "gpt-trader/cold"


class Clock:
    """A hand-moved monotonic clock: the store only retries S3 when the test says time has passed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SystemState(dict[str, bool]):
    """Stands in for the state manager: the flag the runbook names."""

    def on_availability(self, available: bool) -> None:
        self["system:s3_available"] = available


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state() -> SystemState:
    return SystemState({"system:s3_available": True})


def fallback_store(server: MotoS3, folder: Path, state: SystemState, clock: Clock) -> FallbackObjectStore:
    primary = S3Store(server.url(PREFIX), endpoint_url=server.endpoint)
    return FallbackObjectStore(primary, folder, state.on_availability, retry_interval=5.0, clock=clock)


def test_outage_mid_run_queues_locally_then_syncs_everything_byte_identical(
    s3_outage: MotoS3, tmp_path: Path, state: SystemState, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trader.state")
    store = fallback_store(s3_outage, tmp_path / "fallback", state, clock)
    recoveries: list[str] = []
    store.recovery_listeners.append(lambda tier, _seconds: recoveries.append(tier))
    before = {f"checkpoints/before-{i}.json": f"before {i}".encode() for i in range(3)}
    during = {f"checkpoints/during-{i}.json.gz": bytes([i]) * (1000 + i) for i in range(5)}
    for name, data in before.items():
        store.put(name, data)

    s3_outage.stop()
    for name, data in during.items():
        store.put(name, data)

    assert state["system:s3_available"] is False
    assert store.available is False
    assert store.pending == list(during)
    assert all(store.get(name) == data for name, data in during.items())  # reads keep working from the fallback
    assert "S3 outage detected" in caplog.text and "local storage fallback" in caplog.text

    s3_outage.start()
    clock.now += 5
    store.put("checkpoints/after.json", b"after")  # the next call notices S3 is back and syncs first

    assert state["system:s3_available"] is True
    assert store.pending == []
    assert "S3 recovery" in caplog.text and "Synced 5 objects to S3" in caplog.text
    assert recoveries == ["s3"]
    everything = {**before, **during, "checkpoints/after.json": b"after"}
    assert s3_outage.keys(PREFIX) == sorted(f"{PREFIX}/{name}" for name in everything)
    for name, data in everything.items():
        assert s3_outage.read(f"{PREFIX}/{name}") == data
    assert list((tmp_path / "fallback" / "objects").rglob("*.json*")) == []  # synced copies are removed locally


def test_no_retry_before_the_interval_so_writes_stay_fast_during_the_outage(
    s3_outage: MotoS3, tmp_path: Path, state: SystemState, clock: Clock
) -> None:
    store = fallback_store(s3_outage, tmp_path / "fallback", state, clock)
    s3_outage.stop()
    store.put("a.json", b"1")  # detects the outage
    s3_outage.start()

    clock.now += 4.9
    store.put("b.json", b"2")

    assert store.available is False and store.pending == ["a.json", "b.json"]
    assert s3_outage.keys(PREFIX) == []


def test_queue_survives_a_restart_and_sync_uploads_it(
    s3_outage: MotoS3, tmp_path: Path, state: SystemState, clock: Clock
) -> None:
    store = fallback_store(s3_outage, tmp_path / "fallback", state, clock)
    s3_outage.stop()
    store.put("exports/state.json", b"{}")
    store.put("logs/1.log", b"line\n")

    reopened = fallback_store(s3_outage, tmp_path / "fallback", state, clock)
    assert reopened.available is False
    assert reopened.pending == ["exports/state.json", "logs/1.log"]
    s3_outage.start()
    synced = reopened.sync()

    assert synced == 2
    assert state["system:s3_available"] is True
    assert s3_outage.read(f"{PREFIX}/exports/state.json") == b"{}"
    assert s3_outage.read(f"{PREFIX}/logs/1.log") == b"line\n"


def test_sync_while_still_down_keeps_the_queue(
    s3_outage: MotoS3, tmp_path: Path, state: SystemState, clock: Clock
) -> None:
    store = fallback_store(s3_outage, tmp_path / "fallback", state, clock)
    s3_outage.stop()
    store.put("a.json", b"1")

    synced = store.sync()

    assert synced == 0
    assert store.pending == ["a.json"]
    assert state["system:s3_available"] is False


def test_deletes_during_the_outage_are_applied_on_sync(
    s3_outage: MotoS3, tmp_path: Path, state: SystemState, clock: Clock
) -> None:
    store = fallback_store(s3_outage, tmp_path / "fallback", state, clock)
    store.put("checkpoints/old.json", b"old")
    s3_outage.stop()
    store.put("checkpoints/new.json", b"new")

    store.delete("checkpoints/old.json")

    with pytest.raises(ObjectNotFound):
        store.get("checkpoints/old.json")
    s3_outage.start()
    assert store.sync() == 2
    assert s3_outage.keys(PREFIX) == [f"{PREFIX}/checkpoints/new.json"]


def test_reading_an_object_only_s3_holds_during_the_outage_says_so(
    s3_outage: MotoS3, tmp_path: Path, state: SystemState, clock: Clock
) -> None:
    store = fallback_store(s3_outage, tmp_path / "fallback", state, clock)
    store.put("a.json", b"1")
    s3_outage.stop()

    with pytest.raises(TierUnavailable):
        store.get("a.json")

    assert state["system:s3_available"] is False


def test_list_merges_s3_with_the_queue(moto_s3: MotoS3, tmp_path: Path, state: SystemState, clock: Clock) -> None:
    store = fallback_store(moto_s3, tmp_path / "fallback", state, clock)
    store.put("checkpoints/a.json", b"1")
    store.local.put("checkpoints/b.json", b"2")  # as if queued during an earlier outage
    store._enqueue("checkpoints/b.json", "put")

    assert store.list("checkpoints/") == ["checkpoints/a.json", "checkpoints/b.json"]


def test_checkpoints_made_during_the_outage_reach_s3_after_recovery(
    s3_outage: MotoS3, tmp_path: Path, state: SystemState, clock: Clock
) -> None:
    cold = fallback_store(s3_outage, tmp_path / "fallback", state, clock)
    store = CheckpointStore(f"sqlite:///{tmp_path / 'ledger.db'}", cold, retention=5)
    s3_outage.stop()

    info = store.create({"positions": {"BTC-USD": {"quantity": "0.1"}}}, reason="scheduled")

    assert state["system:s3_available"] is False
    assert store.restore(info.id) == {"positions": {"BTC-USD": {"quantity": "0.1"}}}
    s3_outage.start()
    assert cold.sync() == 2  # the payload and its manifest
    assert state["system:s3_available"] is True
    uploaded = s3_outage.read(f"{PREFIX}/{info.cold_key}")
    assert hashlib.sha256(uploaded).hexdigest() == info.sha256
    assert s3_outage.keys(f"{PREFIX}/accounts/default/checkpoints/") == sorted(
        [f"{PREFIX}/{info.cold_key}", f"{PREFIX}/accounts/default/checkpoints/{info.id}.manifest.json"]
    )
    store.dispose()


def test_check_recovers_only_once_the_retry_interval_has_passed(
    s3_outage: MotoS3, tmp_path: Path, state: SystemState, clock: Clock
) -> None:
    store = fallback_store(s3_outage, tmp_path / "fallback", state, clock)
    s3_outage.stop()
    store.put("a.json", b"1")
    s3_outage.start()

    clock.now += 4.9
    early = store.check()
    clock.now += 0.1
    due = store.check()

    assert (early, due) == (False, True)
    assert s3_outage.read(f"{PREFIX}/a.json") == b"1"
