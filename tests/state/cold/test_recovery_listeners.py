"""StateManager.on_recovery reaches the cold store too: an S3 outage that a sync ends is reported as ("s3", seconds),
the same way the metrics exporter hears of Redis and PostgreSQL recoveries."""

from __future__ import annotations

from pathlib import Path

from tests.state.cold.conftest import MotoS3
from trader.state.cold import FallbackObjectStore, S3Store
from trader.state.hot import MemoryCache
from trader.state.journal import WriteJournal
from trader.state.manager import StateManager
from trader.state.warm import SqlWarmStore


class Clock:
    """A hand-moved monotonic clock: the store only retries S3 when the test says time has passed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_listener_given_to_the_state_manager_hears_the_s3_recovery(
    s3_outage: MotoS3, sqlite_store: SqlWarmStore, tmp_path: Path
) -> None:
    clock = Clock()
    cold = FallbackObjectStore(
        S3Store(s3_outage.url(), endpoint_url=s3_outage.endpoint), tmp_path / "fallback", clock=clock
    )
    manager = StateManager(MemoryCache(), sqlite_store, journal=WriteJournal(tmp_path / "journal.jsonl"), cold=cold)
    recoveries: list[tuple[str, float]] = []
    manager.on_recovery(lambda tier, seconds: recoveries.append((tier, seconds)))

    s3_outage.stop()
    cold.put("checkpoints/during.json", b"during")
    assert not cold.available and recoveries == []

    s3_outage.start()
    clock.now += 60
    cold.put("checkpoints/after.json", b"after")  # the next call notices S3 is back and syncs first

    assert [tier for tier, _ in recoveries] == ["s3"]
    assert recoveries[0][1] >= 0
    assert s3_outage.read("gpt-trader/cold/checkpoints/during.json") == b"during"
